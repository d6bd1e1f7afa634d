"""The gateway's settings, read once from IMAGESVC_* variables."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from limits import RateLimitItem, parse

from common import settings as shared
from common.caller import OWN_SCOPES, SCOPES
from common.env import ConfigError, Env
from common.grpcclient import addresses
from common.tls import Tls
from gateway import params
from gateway.presets import Presets, load_presets
from gateway.ratelimit import Budget, Network
from gateway.signing import Signing, parse_keys, parse_signing
from gateway.tokens import MIN_SECRET_BYTES, KeysError, SecretKey, Tokens, jwks_source

MiB = 1024 * 1024


@dataclass(frozen=True)
class ApiKey:
    """What a key says of its holder."""

    owner: str
    scopes: frozenset[str]  # see common/caller.py


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads from the environment."""

    host: str
    port: int
    workers: int
    cache_addresses: tuple[str, ...]
    processor_addresses: tuple[str, ...]
    max_upload_bytes: int
    max_output_dimension: int
    max_blur_sigma: float
    timeout_seconds: float
    upload_timeout_seconds: float
    retry_after_seconds: int
    # Empty: no auth, every caller is the anonymous owner "".
    api_keys: dict[str, ApiKey]
    tokens: Tokens | None  # None: no JWT
    hot_cache_bytes: int
    log_level: str
    presets: Presets
    tls: Tls | None  # mutual TLS on every gRPC connection, when set
    # Budgets per caller; None: unlimited.
    upload_budget: Budget | None
    render_budget: Budget | None
    rate_limit_url: str | None  # None: counters in memory
    key_prefix: str
    trusted_proxies: tuple[Network, ...]
    cors_origins: tuple[str, ...]  # empty: no CORS headers
    allow_anonymous: bool
    signing: Signing = field(default_factory=Signing)  # no keys: signed URLs are off

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.tokens is not None

    @property
    def loopback_only(self) -> bool:
        """Whether only this machine can reach the listening host."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name may resolve to any address

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = env or Env()
        keys = _api_keys(env.items("API_KEYS", ()))
        max_output_dimension = shared.max_output_dimension(env)
        max_blur_sigma = shared.max_blur_sigma(env)
        limits = params.RequestLimits(max_output_dimension, max_blur_sigma)
        settings = cls(
            host=env.text("GATEWAY_HOST", "127.0.0.1"),
            port=env.integer("GATEWAY_PORT", 8080, maximum=65535),
            workers=env.integer("GATEWAY_WORKERS", 1, minimum=1, maximum=64),
            cache_addresses=addresses(env, "CACHE_ADDRESS", "127.0.0.1:50051"),
            processor_addresses=addresses(env, "PROCESSOR_ADDRESSES", "127.0.0.1:50052"),
            max_upload_bytes=shared.max_upload_bytes(env),
            # The processor's limits, read here too so a bad parameter is refused with
            # the same words, and OpenAPI states them.
            max_output_dimension=max_output_dimension,
            max_blur_sigma=max_blur_sigma,
            timeout_seconds=env.number("GATEWAY_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            upload_timeout_seconds=env.number("UPLOAD_TIMEOUT_SECONDS", 900.0, minimum=0.1),
            retry_after_seconds=env.integer("RETRY_AFTER_SECONDS", 2, minimum=1),
            api_keys=keys,
            tokens=_tokens(env),
            hot_cache_bytes=env.size("GATEWAY_CACHE_BYTES", 64 * MiB),
            log_level=shared.log_level(env),
            presets=_presets(env.text("PRESETS", ""), env.flag("PRESETS_ONLY", False), limits),
            tls=Tls.from_env(env),
            signing=parse_signing(
                parse_keys(env.items("URL_SIGNING_KEYS", ())), env.raw("SIGNATURES")
            ),
            upload_budget=_budget("uploads", env.text("RATE_LIMIT_UPLOADS", "")),
            render_budget=_budget("renders", env.text("RATE_LIMIT_RENDERS", "")),
            rate_limit_url=_redis_url(env.text("RATE_LIMIT_URL", "")),
            key_prefix=env.text("VARIANT_KEY_PREFIX", "imagesvc:"),
            trusted_proxies=_networks(env.items("TRUSTED_PROXIES", ())),
            cors_origins=env.items("CORS_ORIGINS", ()),
            allow_anonymous=env.flag("ALLOW_ANONYMOUS", False),
        )
        if not (settings.loopback_only or settings.auth_enabled or settings.allow_anonymous):
            # Protected mode: an open gateway on a reachable address lets anyone store
            # and delete anything; that must be chosen, not stumbled into.
            raise ConfigError(
                f"IMAGESVC_GATEWAY_HOST={settings.host} is reachable from other machines "
                "and no authentication is configured (IMAGESVC_API_KEYS, IMAGESVC_JWT_SECRET "
                "or IMAGESVC_JWT_JWKS), so anyone could "
                "upload, read and delete every image; configure authentication, listen on "
                "127.0.0.1, or set IMAGESVC_ALLOW_ANONYMOUS=true to serve anonymously anyway"
            )
        return settings


def _budget(label: str, text: str) -> Budget | None:
    """IMAGESVC_RATE_LIMIT_<LABEL>: the limits library's notation (`60/minute`, `1000 per
    hour`), or empty for none."""
    if not text:
        return None
    name = f"RATE_LIMIT_{label.upper()}"
    try:
        item: RateLimitItem = parse(text)
    except ValueError:
        raise ConfigError(
            f"IMAGESVC_{name}={text!r} is not a rate such as 60/minute or 1000 per hour"
        ) from None
    if item.amount < 1:
        raise ConfigError(f"IMAGESVC_{name}={text!r} allows nothing; leave it unset for no limit")
    return Budget(label, item)


def _redis_url(url: str) -> str | None:
    """IMAGESVC_RATE_LIMIT_URL, or None for counters in memory."""
    if not url:
        return None
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise ConfigError("IMAGESVC_RATE_LIMIT_URL takes redis://HOST:PORT/DB (or rediss://)")
    return url


def _networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    """IMAGESVC_TRUSTED_PROXIES: addresses and CIDR blocks."""
    networks: list[Network] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                "IMAGESVC_TRUSTED_PROXIES takes IP addresses and CIDR blocks, "
                f"comma-separated; {item!r} is neither"
            ) from None
    return tuple(networks)


def _presets(path: str, only: bool, limits: params.RequestLimits) -> Presets:
    """The presets file's, checked under the limits requests are (none without a file)."""
    if not path:
        if only:
            # Every transformation would be refused: surely not what was meant.
            raise ConfigError("IMAGESVC_PRESETS_ONLY=true needs presets: set IMAGESVC_PRESETS")
        return Presets()
    return load_presets(path, params.Parameters(limits), only)


def _scopes(text: str) -> frozenset[str] | None:
    """A key's scopes: none said is its owner's own (read, write, delete); `admin` is
    short for every scope; else scopes joined by '+'. None if one is unknown."""
    if not text:
        return OWN_SCOPES
    if text == "admin":
        return SCOPES
    scopes = frozenset(text.split("+"))
    return scopes if scopes <= SCOPES else None


def _api_keys(items: tuple[str, ...]) -> dict[str, ApiKey]:
    """`owner:key[:scopes]` items, each key given to one owner only."""
    keys: dict[str, ApiKey] = {}
    for item in items:
        owner, _, rest = item.partition(":")
        key, _, scope_text = rest.partition(":")
        scopes = _scopes(scope_text)
        if not owner or len(key) < 16 or scopes is None:
            raise ConfigError(
                "IMAGESVC_API_KEYS takes owner:key, owner:key:admin or owner:key:SCOPES "
                "(scopes joined by '+', of images:read, images:write, images:delete, "
                "images:admin), comma-separated, keys of 16 or more characters without ':'"
            )
        if key in keys:
            # Silently, the later owner would win, and the earlier one's uploads with it.
            raise ConfigError(
                f"IMAGESVC_API_KEYS gives one key to both {keys[key].owner} and {owner}"
                if keys[key].owner != owner
                else f"IMAGESVC_API_KEYS lists a key of {owner} twice"
            )
        keys[key] = ApiKey(owner, scopes)
    return keys


def _tokens(env: Env) -> Tokens | None:
    """The JWT verifier the settings describe, or None when neither key is set."""
    secret, jwks = env.raw("JWT_SECRET"), env.raw("JWT_JWKS")
    issuer, audience = env.raw("JWT_ISSUER"), env.raw("JWT_AUDIENCE")
    if secret is None and jwks is None:
        if issuer is not None or audience is not None:
            raise ConfigError(
                "IMAGESVC_JWT_ISSUER and IMAGESVC_JWT_AUDIENCE need IMAGESVC_JWT_SECRET or "
                "IMAGESVC_JWT_JWKS"
            )
        return None
    if secret is not None and jwks is not None:
        # Two kinds of key would mean two algorithms a token could pick between.
        raise ConfigError("IMAGESVC_JWT_SECRET and IMAGESVC_JWT_JWKS exclude each other: set one")
    if secret is not None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"IMAGESVC_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return Tokens(SecretKey(secret.encode()), issuer, audience)
    assert jwks is not None
    try:
        return Tokens(jwks_source(jwks), issuer, audience)
    except KeysError as exc:
        raise ConfigError(f"IMAGESVC_JWT_JWKS={jwks!r} {exc}") from None
