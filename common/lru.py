"""A least-recently-used map bounded by the byte size of its values."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Keeps values while their sizes add up to at most budget bytes, evicting the oldest.

    A value larger than the whole budget is not kept. on_evict hears of every key
    that leaves other than through pop(), so callers can keep side indexes true.
    """

    def __init__(
        self,
        budget: int,
        size: Callable[[V], int],
        on_evict: Callable[[K], None] | None = None,
    ) -> None:
        self.budget = budget
        self.used = 0
        self._size = size
        self._on_evict = on_evict
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> bool:
        """Store value; False if it is too large to keep at all."""
        size = self._size(value)
        if size > self.budget:
            return False
        self.pop(key)
        self._entries[key] = value
        self.used += size
        while self.used > self.budget:
            oldest = next(iter(self._entries))
            self.pop(oldest)
            if self._on_evict is not None:
                self._on_evict(oldest)
        return True

    def pop(self, key: K) -> V | None:
        value = self._entries.pop(key, None)
        if value is not None:
            self.used -= self._size(value)
        return value


class ImageLRU(Generic[V]):
    """A ByteLRU keyed by (image id, key) that can drop everything of one image at once."""

    def __init__(
        self,
        budget: int,
        size: Callable[[V], int],
        on_evict: Callable[[str, str], None] | None = None,
    ) -> None:
        self._lru: ByteLRU[tuple[str, str], V] = ByteLRU(budget, size, self._evicted)
        self._by_image: dict[str, set[str]] = {}
        self._on_evict = on_evict

    @property
    def used(self) -> int:
        return self._lru.used

    def get(self, image_id: str, key: str) -> V | None:
        return self._lru.get((image_id, key))

    def put(self, image_id: str, key: str, value: V) -> bool:
        """Store value; False if it is too large to keep at all."""
        if not self._lru.put((image_id, key), value):
            return False
        self._by_image.setdefault(image_id, set()).add(key)
        return True

    def images(self) -> set[str]:
        return set(self._by_image)

    def pop(self, image_id: str, key: str) -> V | None:
        value = self._lru.pop((image_id, key))
        if value is not None:
            self._unindex((image_id, key))
        return value

    def purge(self, image_id: str) -> set[str]:
        """Drop every entry of image_id; return their keys."""
        keys = self._by_image.pop(image_id, set())
        for key in keys:
            self._lru.pop((image_id, key))
        return keys

    def clear(self) -> None:
        for image_id in list(self._by_image):
            self.purge(image_id)

    def _evicted(self, ident: tuple[str, str]) -> None:
        self._unindex(ident)
        if self._on_evict is not None:
            self._on_evict(*ident)

    def _unindex(self, ident: tuple[str, str]) -> None:
        keys = self._by_image.get(ident[0])
        if keys is not None:
            keys.discard(ident[1])
            if not keys:
                del self._by_image[ident[0]]
