"""What every storage backend raises when its engine cannot be reached, or is full."""

from __future__ import annotations

import errno

from common.errors import Reason, ServiceError


class StorageUnavailable(ServiceError):
    """The engine behind a store (S3, PostgreSQL, Redis...) did not answer.

    A ServiceError of its own, so every RPC that meets it answers UNAVAILABLE (HTTP 503
    with Retry-After: the call may succeed later), never INTERNAL; the engine's own
    words stay in `detail`, for the log, since they may name hosts.
    """

    def __init__(self, engine: str, detail: str = "") -> None:
        super().__init__(
            Reason.UPSTREAM_UNAVAILABLE,
            f"the {engine} storage did not answer",
            {"upstream": engine},
            detail,
        )
        self.engine = engine


# What the kernel says when a write finds no room: the file system is full, or the
# service's user is over its quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(ServiceError):
    """A store has no room for what is being written (a full disk, a quota).

    RESOURCE_EXHAUSTED with its own reason, so the gateway answers 507 rather than the
    503 of an overload: retrying helps only once an operator has made room. The write
    that failed leaves nothing behind; reads go on.
    """

    def __init__(self, store: str, detail: str = "") -> None:
        super().__init__(
            Reason.INSUFFICIENT_STORAGE,
            f"the {store} storage is full",
            {"store": store},
            detail,
        )
        self.store = store


def is_full(error: OSError) -> bool:
    """Whether error is a write that found no room."""
    return error.errno in FULL_ERRNOS
