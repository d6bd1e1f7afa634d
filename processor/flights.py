"""Single-flight: identical concurrent work runs once and every caller gets the result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Flights(Generic[T]):
    """Work in flight by key, so identical concurrent requests share one result.

    Each flight is one task that runs, in order: the work; handing its result to every
    caller waiting on it; the follow-up (storing the variant), if any; forgetting the
    key. A caller arriving before the key is forgotten shares the result instead of
    starting the work again. The task outlives any caller: each waits by its own
    deadline, and none can cancel the work for the others.
    """

    def __init__(self) -> None:
        self._results: dict[str, asyncio.Future[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, key: str) -> bool:
        return key in self._results

    def get(self, key: str) -> asyncio.Future[T] | None:
        """The result of key's work in flight, if there is one."""
        return self._results.get(key)

    def start(
        self,
        key: str,
        work: Callable[[], Awaitable[T]],
        then: Callable[[T], Awaitable[None]] | None = None,
    ) -> asyncio.Future[T]:
        """Start key's work (none may be in flight); its result, for every caller."""
        assert key not in self._results, f"{key} is already in flight"
        result: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # Retrieve the exception even when every caller has gone away.
        result.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._results[key] = result
        task = asyncio.ensure_future(self._fly(key, work, then, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return result

    async def _fly(
        self,
        key: str,
        work: Callable[[], Awaitable[T]],
        then: Callable[[T], Awaitable[None]] | None,
        result: asyncio.Future[T],
    ) -> None:
        try:
            try:
                value = await work()
            except Exception as exc:
                result.set_exception(exc)  # its callers get the error; the next starts afresh
                return
            except BaseException:
                result.cancel()
                raise
            result.set_result(value)
            if then is not None:
                await then(value)
        finally:
            del self._results[key]

    async def drain(self) -> None:
        """Wait for every flight, follow-ups included (at shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
