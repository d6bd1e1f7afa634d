"""`make soak` in small: the same system and mix, short enough for the suite (its memory
verdict needs the long run, so only the answers are judged here)."""

from __future__ import annotations

from bench.soak import MIX, quarters, soak


def test_a_short_soak_answers_every_kind_of_request_without_a_5xx() -> None:
    lines: list[str] = []
    verdict = soak(400, concurrency=16, report=lines.append)
    assert verdict.load.failures == [], lines
    kinds = {kind for kind, status in verdict.load.statuses if status < 400}
    assert kinds == set(MIX), lines
    # Every service was sampled throughout.
    assert all(len(v) == 4 and min(v) > 0 for v in verdict.rss.values()), verdict.rss


def test_quarters_are_the_means_of_each_quarter_in_order() -> None:
    assert quarters([1, 1, 2, 2, 3, 3, 4, 4]) == [1.0, 2.0, 3.0, 4.0]
