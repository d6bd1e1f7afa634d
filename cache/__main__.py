"""`python -m cache`: run the cache service."""

import asyncio
import sys

from cache.config import Settings
from cache.server import serve
from cache.storage import StorageUnavailable
from common.env import ConfigError
from common.ports import AddressUnavailable


def main() -> None:
    """Serve until SIGTERM (also the `imagesvc-cache` console script)."""
    try:
        asyncio.run(serve(Settings.from_env()))
    except ConfigError as exc:
        sys.exit(f"cache: bad configuration: {exc}")
    except AddressUnavailable as exc:
        sys.exit(f"cache: {exc}")
    except StorageUnavailable as exc:
        sys.exit(f"cache: {exc.message}: {exc.detail}")


if __name__ == "__main__":
    main()
