"""VariantBatches: when a batch leaves and what each variant's caller gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import image_pb2

from processor.batches import VariantBatches


class Recorder:
    """Answers each batch as the cache would, keeping the batches it was sent."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def send(self, variants: list[pb.WholeVariant]) -> Sequence[pb.PutVariantResult]:
        self.batches.append([v.header.key for v in variants])
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("the cache is gone")
        return [
            pb.PutVariantResult(variant=image_pb2.VariantMetadata(key=v.header.key))
            for v in variants
        ]


def variant(key: str, size: int = 1) -> pb.WholeVariant:
    return pb.WholeVariant(header=pb.PutVariantHeader(key=key), data=b"x" * size)


def run(
    recorder: Recorder, delay: float, max_count: int, max_bytes: int, *sizes: int
) -> list[object]:
    async def main() -> list[object]:
        batches = VariantBatches(recorder.send, delay, max_count, max_bytes)
        puts = [batches.put(variant(f"k{n}", size)) for n, size in enumerate(sizes)]
        # The delay is far beyond the test's timeout: only the bounds can send these.
        return await asyncio.wait_for(asyncio.gather(*puts, return_exceptions=True), 5)

    return asyncio.run(main())


def test_a_full_batch_leaves_without_waiting() -> None:
    recorder = Recorder()
    results = run(recorder, 3600, 2, 1000, 1, 1, 1, 1)
    assert recorder.batches == [["k0", "k1"], ["k2", "k3"]]
    assert [r.variant.key for r in results] == ["k0", "k1", "k2", "k3"]  # type: ignore[attr-defined]


def test_a_batch_never_holds_more_than_max_bytes() -> None:
    recorder = Recorder()
    run(recorder, 3600, 64, 10, 6, 6, 4)  # 6 + 6 would pass 10; 6 + 4 reaches it
    assert recorder.batches == [["k0"], ["k1", "k2"]]


def test_a_lone_variant_leaves_after_the_delay() -> None:
    recorder = Recorder()
    results = run(recorder, 0.05, 64, 1000, 1)
    assert recorder.batches == [["k0"]]
    assert results[0].variant.key == "k0"  # type: ignore[attr-defined]


def test_a_failed_call_fails_every_variant_in_it() -> None:
    results = run(Recorder(fail=True), 3600, 3, 1000, 1, 1, 1)
    assert all(isinstance(r, ConnectionError) for r in results)


def test_drain_sends_what_waits() -> None:
    recorder = Recorder()

    async def main() -> None:
        batches = VariantBatches(recorder.send, 3600, 64, 1000)
        waiting = asyncio.ensure_future(batches.put(variant("k")))
        await asyncio.sleep(0)
        await asyncio.wait_for(batches.drain(), 5)
        assert (await waiting).variant.key == "k"

    asyncio.run(main())
    assert recorder.batches == [["k"]]


@pytest.mark.parametrize("answers", [0, 2])
def test_a_wrong_number_of_answers_is_an_error(answers: int) -> None:
    async def send(variants: list[pb.WholeVariant]) -> Sequence[pb.PutVariantResult]:
        return [pb.PutVariantResult()] * answers

    async def main() -> None:
        batches = VariantBatches(send, 0, 64, 1000)
        with pytest.raises(RuntimeError):
            await batches.put(variant("k"))

    asyncio.run(main())


def test_results_for_other_variants_are_an_error() -> None:
    async def send(variants: list[pb.WholeVariant]) -> Sequence[pb.PutVariantResult]:
        return [pb.PutVariantResult(variant=image_pb2.VariantMetadata(key="someone-else"))]

    async def main() -> None:
        batches = VariantBatches(send, 0, 64, 1000)
        with pytest.raises(RuntimeError):
            await batches.put(variant("k"))

    asyncio.run(main())


def test_once_closed_every_variant_leaves_at_once() -> None:
    recorder = Recorder()

    async def main() -> None:
        batches = VariantBatches(recorder.send, 3600, 64, 1000)
        batches.close()
        assert batches.idle
        result = await asyncio.wait_for(batches.put(variant("late")), 5)
        assert result.variant.key == "late"
        assert batches.idle

    asyncio.run(main())
    assert recorder.batches == [["late"]]
