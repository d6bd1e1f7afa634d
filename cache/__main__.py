"""`python -m cache`: run the cache service."""

import asyncio

from cache.config import Settings
from cache.server import serve

if __name__ == "__main__":
    asyncio.run(serve(Settings.from_env()))
