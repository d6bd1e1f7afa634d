"""Per-caller budgets for uploads and for renders that miss every cache.

Counting is the `limits` library's moving window: every unit spent is remembered until it
is a window old, so a caller never gets twice the budget across a window's edge (as a
fixed window allows), and the time until a unit comes back is exact, which is what
`Retry-After` and `t` say. Its cost is one entry per unit spent, at most the budget per
caller, in memory or in a Redis list.

The headers follow draft-ietf-httpapi-ratelimit-headers-11 (RFC 9651 structured fields):
`RateLimit-Policy: "uploads";q=60;w=60` and `RateLimit: "uploads";r=59;t=60`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.requests import Request

from common.caller import Caller
from gateway.problems import HTTPProblem

log = logging.getLogger("gateway.ratelimit")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A counter that does not answer within this is taken as down: a limit must never cost
# more than a moment of a request's time.
STORAGE_TIMEOUT_SECONDS = 0.5
# Once it is down, how long requests go unlimited without asking it again, so that a store
# that hangs costs one timeout now and then, not one per request.
STORAGE_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class Budget:
    """One named budget: `amount` units per `window` seconds for each caller."""

    name: str
    item: RateLimitItem

    @property
    def policy(self) -> str:
        return f'"{self.name}";q={self.item.amount};w={self.item.get_expiry()}'


@dataclass(frozen=True)
class Standing:
    """A caller's budget as it stands: units left and seconds until one comes back."""

    budget: Budget
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": self.budget.policy,
            "RateLimit": f'"{self.budget.name}";r={self.remaining};t={self.reset_seconds}',
        }

    def refusal(self) -> HTTPProblem:
        return HTTPProblem(
            429,
            "Too many requests",
            f"this caller's {self.budget.name} budget ({self.budget.item.amount} per "
            f"{self.budget.item.get_expiry()} s) is spent; retry after {self.reset_seconds} s",
            kind="rate-limited",
            headers={**self.headers(), "Retry-After": str(self.reset_seconds)},
            policy=self.budget.name,
        )


class Limiter:
    """The gateway's budgets over one counter store, shared by every replica when it is
    Redis. A store that fails lets requests through (with a warning): losing the limits
    for a while is better than losing the service."""

    def __init__(self, storage: Storage) -> None:
        self._strategy = MovingWindowRateLimiter(storage)
        self._failing = False
        self._retry_at = 0.0  # monotonic; while before it, the store is not asked

    @classmethod
    def connect(cls, url: str | None, key_prefix: str) -> Limiter:
        """Counters in Redis at url (redis:// or rediss://), else in this process's memory."""
        if url is None:
            return cls(MemoryStorage())
        storage = RedisStorage(
            f"async+{url}",
            wrap_exceptions=True,
            key_prefix=f"{key_prefix}ratelimit",
            connect_timeout=STORAGE_TIMEOUT_SECONDS,
            stream_timeout=STORAGE_TIMEOUT_SECONDS,
        )
        return cls(storage)

    async def check(self, budget: Budget, who: str) -> Standing | None:
        """The caller's standing, without spending; raises 429 when nothing is left.
        None when the store is down."""
        standing = await self._standing(budget, who)
        if standing is not None and standing.remaining <= 0:
            raise standing.refusal()
        return standing

    async def spend(self, budget: Budget, who: str, *, refuse: bool = True) -> Standing | None:
        """Spend one unit; raises 429 when none was left, unless told not to refuse (the
        work is done). None when the store is down."""
        if time.monotonic() < self._retry_at:
            return None
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT_SECONDS):
                spent = await self._strategy.hit(budget.item, budget.name, who)
        except (StorageError, TimeoutError) as exc:
            self._down(exc)
            return None
        standing = await self._standing(budget, who)
        if refuse and not spent and standing is not None:
            raise standing.refusal()
        return standing

    async def _standing(self, budget: Budget, who: str) -> Standing | None:
        if time.monotonic() < self._retry_at:
            return None
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT_SECONDS):
                stats = await self._strategy.get_window_stats(budget.item, budget.name, who)
        except (StorageError, TimeoutError) as exc:
            self._down(exc)
            return None
        if self._failing:
            self._failing = False
            log.info("rate limits are enforced again")
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        return Standing(budget, max(0, stats.remaining), reset)

    def _down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + STORAGE_RETRY_SECONDS
        # Once per outage, not once per request.
        if not self._failing:
            self._failing = True
            log.warning(
                "the rate limit store is unreachable: requests go unlimited until it is back",
                extra={"err": str(exc) or type(exc).__name__},
            )


def caller_key(request: Request, caller: Caller, trusted: Sequence[Network]) -> str:
    """Whose budget a request spends: its owner's when authenticated, else its client
    address's."""
    if caller.authenticated:
        return f"owner:{caller.owner}"
    return f"address:{_holder(client_address(request, trusted))}"


def _holder(address: str) -> str:
    """An IPv4 address, or the /64 an IPv6 one is in: whoever holds one IPv6 address
    holds its whole /64, and would otherwise have 2^64 budgets."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_address(request: Request, trusted: Sequence[Network]) -> str:
    """The client's address: the peer, or when the peer is a trusted proxy, the hop it
    names in X-Forwarded-For, going on leftwards only while the hops are trusted proxies
    too (whatever is further left was written by the client and proves nothing)."""
    address = request.client.host if request.client else ""
    if not trusted:
        return address
    hops = [
        hop.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
        if hop.strip()
    ]
    while hops and _is_trusted(address, trusted):
        address = hops.pop()
    return address


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
