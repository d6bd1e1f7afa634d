"""`python -m processor`: run the processor service."""

import asyncio
import sys

from common.env import ConfigError
from common.ports import AddressUnavailable
from processor.config import Settings
from processor.server import serve


def main() -> None:
    """Serve until SIGTERM (also the `imagesvc-processor` console script)."""
    try:
        asyncio.run(serve(Settings.from_env()))
    except ConfigError as exc:
        sys.exit(f"processor: bad configuration: {exc}")
    except AddressUnavailable as exc:
        sys.exit(f"processor: {exc}")


if __name__ == "__main__":
    main()
