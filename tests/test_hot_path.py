"""What a cached hit's bookkeeping is made of, in process: counters added up per turn
of the event loop, access lines written once per turn, the pid read without a system
call but right after a fork, and a held answer's headers encoded once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from common import jsonlog, process
from gateway.answers import Entry, HeldResponse, from_memory
from gateway.observability import Tally


class Writes(io.StringIO):
    """A stream that records each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[Writes]:
    """jsonlog configured to write to a recording stream (restored after)."""
    root = logging.getLogger()
    handlers, level, handler = root.handlers[:], root.level, jsonlog._handler
    recording = Writes()
    jsonlog.configure("test")
    assert jsonlog._handler is not None
    jsonlog._handler.setStream(recording)
    yield recording
    root.handlers[:], jsonlog._handler = handlers, handler
    root.setLevel(level)


def test_a_counter_is_written_once_per_turn_with_every_increment() -> None:
    registry = CollectorRegistry()
    counter = Counter("hits", "Hits.", registry=registry)
    other = Counter("bytes", "Bytes.", registry=registry)
    tally = Tally()
    seen: list[float] = []

    async def main() -> None:
        for _ in range(5):
            tally.inc(counter)
        tally.inc(other, 300)
        seen.append(registry.get_sample_value("hits_total") or 0.0)  # nothing yet
        await asyncio.sleep(0)  # scenario: the turn ends
        seen.append(registry.get_sample_value("hits_total") or 0.0)
        tally.inc(counter)
        await asyncio.sleep(0)  # scenario: another turn ends
        seen.append(registry.get_sample_value("hits_total") or 0.0)

    asyncio.run(main())
    assert seen == [0.0, 5.0, 6.0]
    assert registry.get_sample_value("bytes_total") == 300


def test_access_lines_of_one_turn_are_written_together(stream: Writes) -> None:
    log = jsonlog.HotLog("test.access")

    async def main() -> list[str]:
        for n in range(3):
            log.info("request", {"n": n})
        before = list(stream.writes)
        await asyncio.sleep(0)  # scenario: the turn ends
        return before

    assert asyncio.run(main()) == []  # written as the turn ends, not before
    (written,) = stream.writes
    lines = [json.loads(line) for line in written.splitlines()]
    assert [(e["logger"], e["msg"], e["n"]) for e in lines] == [
        ("test.access", "request", n) for n in range(3)
    ]
    assert all(e["pid"] == os.getpid() for e in lines)


def test_an_access_line_outside_an_event_loop_is_written_at_once(stream: Writes) -> None:
    jsonlog.HotLog("test.access").info("request", {"n": 1})
    assert json.loads(stream.writes[-1])["n"] == 1


def test_the_pid_is_read_again_after_a_fork() -> None:
    assert process.pid() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports what it reads
        os.write(write, f"{process.pid()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    told = os.read(read, 100).decode().split()
    os.waitpid(child, 0)
    os.close(read)
    assert told[0] == told[1] != str(os.getpid())


def test_a_held_answer_is_served_with_its_headers_encoded_once() -> None:
    entry = Entry(
        b"held bytes",
        "image/png",
        {"ETag": '"e1"', "Cache-Control": "public", "X-Cache": "MISS"},
        owner="",
        visibility=1,
    )
    first, again = from_memory(entry, "GET", None), from_memory(entry, "GET", None)
    assert isinstance(first, HeldResponse) and first.raw_headers is again.raw_headers
    assert dict(first.raw_headers) == {
        b"etag": b'"e1"',
        b"cache-control": b"public",
        b"x-cache": b"HIT",
        b"content-length": b"10",
        b"content-type": b"image/png",
    }
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    asyncio.run(first({"type": "http"}, receive, send))
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"held bytes"
    # The other answers still come through Response, with the same validators.
    assert from_memory(entry, "GET", '"e1"').status_code == 304
    head = from_memory(entry, "HEAD", None)
    assert head.body == b"" and head.headers["content-length"] == "10"
    assert entry.headers["X-Cache"] == "MISS"  # the entry itself is left alone
