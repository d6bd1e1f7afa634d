"""Single-flight: identical concurrent work runs once and every caller gets the result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Flights(Generic[T]):
    """Runs work once per key among concurrent callers.

    The work runs in its own task, so a caller hanging up does not cancel it for the
    others. Its result is shared as soon as it exists; the key stays registered until
    the follow-up (storing the variant) finishes, so callers arriving in that window
    get the result instead of starting the work again.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    async def run(
        self,
        key: str,
        work: Callable[[], Awaitable[T]],
        then: Callable[[T], Awaitable[None]],
    ) -> tuple[T, bool]:
        """(result, whether this caller started the work)."""
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight), False
        flight = asyncio.create_task(self._lead(key, work, then))
        self._flights[key] = flight
        # Retrieve the exception even when every caller has gone away.
        flight.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(flight), True

    async def _lead(
        self, key: str, work: Callable[[], Awaitable[T]], then: Callable[[T], Awaitable[None]]
    ) -> T:
        try:
            result = await work()
        except BaseException:
            del self._flights[key]
            raise
        follow_up = asyncio.create_task(self._finish(key, then, result))
        self._tasks.add(follow_up)
        follow_up.add_done_callback(self._tasks.discard)
        return result

    async def _finish(self, key: str, then: Callable[[T], Awaitable[None]], result: T) -> None:
        try:
            await then(result)
        finally:
            self._flights.pop(key, None)

    async def drain(self) -> None:
        """Wait for work and follow-ups still running (at shutdown)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._flights.values(), *self._tasks, return_exceptions=True)
