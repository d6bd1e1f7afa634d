"""Single-flight: identical concurrent work runs once and every caller gets the result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Flights(Generic[T]):
    """Work in flight by key, so identical concurrent requests share one result.

    The caller that starts the work registers it and, once it has its answer, settles
    it: the follow-up (storing the variant) runs after the work ends, in its own task,
    off the starting caller's path. The key stays registered until then, so callers
    arriving in that window get the result instead of starting the work again.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: str) -> bool:
        return key in self._flights

    def join(
        self, key: str, start: Callable[[], asyncio.Future[T]]
    ) -> tuple[asyncio.Future[T], bool]:
        """(key's work, whether this call started it): joined if running, else start()ed.

        Whoever starts the work must settle it.
        """
        flight = self._flights.get(key)
        if flight is not None:
            return flight, False
        flight = start()
        # Retrieve the exception even when every caller has gone away.
        flight.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._flights[key] = flight
        return flight, True

    def settle(
        self, key: str, flight: asyncio.Future[T], then: Callable[[T], Awaitable[None]] | None
    ) -> None:
        """When the work ends: run then(result) if it succeeded, then forget key."""
        task = asyncio.ensure_future(self._settle(key, flight, then))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(
        self, key: str, flight: asyncio.Future[T], then: Callable[[T], Awaitable[None]] | None
    ) -> None:
        try:
            try:
                result = await asyncio.shield(flight)
            except Exception:
                return  # its callers got the error; the next caller starts afresh
            if then is not None:
                await then(result)
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def drain(self) -> None:
        """Wait for work and follow-ups still running (at shutdown)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._flights.values(), *self._tasks, return_exceptions=True)
