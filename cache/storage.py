"""What every storage backend raises when its engine cannot be reached."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The engine behind a store (S3, PostgreSQL, Redis...) did not answer; the call may
    succeed later, so callers get UNAVAILABLE (HTTP 503 with Retry-After), never INTERNAL."""

    def __init__(self, engine: str, detail: str = "") -> None:
        super().__init__(f"{engine} did not answer" + (f": {detail}" if detail else ""))
        self.engine = engine
