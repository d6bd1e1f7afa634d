"""Deleted ids handed to every iterator a store's `deletions()` made, each with its own queue."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import weakref

from cache.metadata import DeletionsMissed

# As many ids as a consumer may fall behind by before it is cut off; a watcher this far
# behind is not keeping up, and forgetting everything is cheaper than buffering more.
BACKLOG = 10_000


class _End(enum.Enum):
    MISSED = enum.auto()
    CLOSED = enum.auto()


class Subscription:
    """One consumer's view of the deletions: every id published after it was made."""

    def __init__(self, backlog: int) -> None:
        self._queue: asyncio.Queue[str | _End] = asyncio.Queue(maxsize=backlog)
        self._end: _End | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> str:
        # The end is checked first: ids still queued behind a miss are worthless, since
        # the consumer forgets everything anyway.
        if self._end is None:
            item = await self._queue.get()
            if not isinstance(item, _End):
                return item
        if self._end is _End.MISSED:
            raise DeletionsMissed("some deletions may not have been announced")
        raise StopAsyncIteration

    def _offer(self, image_id: str) -> bool:
        try:
            self._queue.put_nowait(image_id)
        except asyncio.QueueFull:
            self._finish(_End.MISSED)
            return False
        return True

    def _finish(self, end: _End) -> None:
        if self._end is not None:
            return
        self._end = end
        # Wakes a consumer waiting on an empty queue; a full one is not waiting, and
        # sees _end on its next call.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(end)


class DeletionFanout:
    """Publishes each deleted id to every live Subscription.

    `live` is False while the source of deletions (a LISTEN connection) is down: a
    subscription made then is told at once that it misses some, so that no consumer
    ever believes it follows deletions while nothing is heard; it subscribes again.
    """

    def __init__(self, *, live: bool, backlog: int = BACKLOG) -> None:
        self._backlog = backlog
        self._live = live
        self._closed = False
        # Weak: a consumer that stops iterating without closing must not be fed forever.
        self._subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()

    def subscribe(self) -> Subscription:
        """A new consumer, seeing every id published from now on."""
        subscription = Subscription(self._backlog)
        if self._closed:
            subscription._finish(_End.CLOSED)
        elif not self._live:
            subscription._finish(_End.MISSED)
        else:
            self._subscribers.add(subscription)
        return subscription

    def publish(self, image_id: str) -> None:
        """Hand image_id to every consumer; one too far behind is cut off."""
        for subscription in list(self._subscribers):
            if not subscription._offer(image_id):
                self._subscribers.discard(subscription)

    def lost(self) -> None:
        """The source went down: every consumer may miss deletions from now on."""
        if self._live:
            self._live = False
            self._end_all(_End.MISSED)

    def connected(self) -> None:
        """The source is back: consumers made from now on hear every deletion."""
        self._live = True

    def close(self) -> None:
        """End every consumer's iteration; later ones end at once."""
        self._closed = True
        self._end_all(_End.CLOSED)

    def _end_all(self, end: _End) -> None:
        subscribers = list(self._subscribers)
        self._subscribers.clear()
        for subscription in subscribers:
            subscription._finish(end)
