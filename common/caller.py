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

# Binary (UTF-8): an owner is any text, and gRPC's text metadata takes printable ASCII only.
OWNER_KEY = "x-caller-owner-bin"
ADMIN_KEY = "x-caller-admin"


READ = "images:read"
WRITE = "images:write"
DELETE = "images:delete"
ADMIN = "images:admin"  # every owner's images, as their owner may
SCOPES = frozenset({READ, WRITE, DELETE, ADMIN})
# What an authenticated caller may do when nothing narrower is said (an API key without
# scopes): everything with their own images.
OWN_SCOPES = frozenset({READ, WRITE, DELETE})


@dataclass(frozen=True)
class Caller:
    owner: str  # "" for the anonymous caller
    authenticated: bool
    scopes: frozenset[str] = frozenset({READ})

    @property
    def admin(self) -> bool:
        """May read, and do what its other scopes allow with, any owner's images."""
        return ADMIN in self.scopes

    def may(self, scope: str) -> bool:
        """Whether this caller holds scope."""
        return scope in self.scopes

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """This caller as gRPC metadata."""
        owner = self.owner.encode() if self.authenticated else b""
        return ((OWNER_KEY, owner), (ADMIN_KEY, "1" if self.admin else "0"))


ANONYMOUS = Caller("", False)  # public images only
# Where no keys are configured there is no access control: every caller may read and
# delete every image.
EVERYONE = Caller("", False, SCOPES)


def caller_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller | None:
    """The caller a call was made for, or None when it names none."""
    found = dict(metadata or ())
    owner = found.get(OWNER_KEY)
    if not isinstance(owner, bytes):
        return None
    name = owner.decode("utf-8", "replace")
    scopes = SCOPES if found.get(ADMIN_KEY) == "1" else frozenset({READ})
    return Caller(name, authenticated=bool(name), scopes=scopes)


def can_read(owner: str, visibility: int, caller: Caller) -> bool:
    """Public images are everyone's; a private one is its owner's (an authenticated
    caller holding images:read: an anonymous one owns nothing, not even images without
    an owner) and an admin's."""
    if visibility == image_pb2.VISIBILITY_PUBLIC or caller.admin:
        return True
    return caller.authenticated and owner == caller.owner and caller.may(READ)
