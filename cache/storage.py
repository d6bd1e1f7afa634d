"""What every storage backend raises when its engine cannot be reached."""

from __future__ import annotations

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
