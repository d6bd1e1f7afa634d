"""Who a call is made for, and what they may read.

The gateway identifies its caller and passes them on in gRPC metadata; the cache service
then answers a read of an image the caller may not see exactly as one of an image that
does not exist, by the same code path (so not even its timing tells them apart). Calls
that carry no caller (internal services) are not scoped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from imageservice.v1 import image_pb2

OWNER_KEY = "x-caller-owner"
ADMIN_KEY = "x-caller-admin"


@dataclass(frozen=True)
class Caller:
    owner: str  # "" for the anonymous caller
    authenticated: bool
    admin: bool = False  # may read and delete any owner's images

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """This caller as gRPC metadata."""
        return ((OWNER_KEY, self.owner), (ADMIN_KEY, "1" if self.admin else "0"))


ANONYMOUS = Caller("", False)


def caller_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller | None:
    """The caller a call was made for, or None when it names none."""
    found = dict(metadata or ())
    owner = found.get(OWNER_KEY)
    if not isinstance(owner, str):
        return None
    return Caller(owner, bool(owner), admin=found.get(ADMIN_KEY) == "1")


def can_read(owner: str, visibility: int, caller: Caller) -> bool:
    """Public images are everyone's; a private one is its owner's (and an admin's)."""
    return visibility == image_pb2.VISIBILITY_PUBLIC or owner == caller.owner or caller.admin
