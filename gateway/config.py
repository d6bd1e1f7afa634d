"""The gateway's settings, read once from IMAGESVC_* variables."""

from __future__ import annotations

from dataclasses import dataclass

from common.env import ConfigError, Env

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads from the environment."""

    host: str
    port: int
    workers: int
    cache_address: str
    processor_addresses: tuple[str, ...]
    max_upload_bytes: int
    timeout_seconds: float
    upload_timeout_seconds: float
    retry_after_seconds: int
    # API key -> owner. Empty: no auth, every caller is the anonymous owner "".
    api_keys: dict[str, str]
    chunk_bytes: int
    hot_cache_bytes: int
    log_level: str

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = env or Env()
        keys: dict[str, str] = {}
        for item in env.items("API_KEYS", ()):
            owner, sep, key = item.partition(":")
            if not sep or not owner or len(key) < 16:
                raise ConfigError(
                    "IMAGESVC_API_KEYS takes owner:key pairs, comma-separated, "
                    "keys of 16 or more characters"
                )
            keys[key] = owner
        processors = env.items("PROCESSOR_ADDRESSES", ("127.0.0.1:50052",))
        if not processors:
            raise ConfigError("IMAGESVC_PROCESSOR_ADDRESSES names no address")
        return cls(
            host=env.text("GATEWAY_HOST", "127.0.0.1"),
            port=env.integer("GATEWAY_PORT", 8080, maximum=65535),
            workers=env.integer("GATEWAY_WORKERS", 1, minimum=1, maximum=64),
            cache_address=env.text("CACHE_ADDRESS", "127.0.0.1:50051"),
            processor_addresses=processors,
            max_upload_bytes=env.size("MAX_UPLOAD_BYTES", 50 * MiB, minimum=1),
            timeout_seconds=env.number("GATEWAY_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            upload_timeout_seconds=env.number("UPLOAD_TIMEOUT_SECONDS", 900.0, minimum=0.1),
            retry_after_seconds=env.integer("RETRY_AFTER_SECONDS", 2, minimum=1),
            api_keys=keys,
            chunk_bytes=env.size("CHUNK_BYTES", 256 * 1024, minimum=1024, maximum=3 * MiB),
            hot_cache_bytes=env.size("GATEWAY_CACHE_BYTES", 64 * MiB),
            log_level=env.text("LOG_LEVEL", "INFO"),
        )
