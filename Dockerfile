# One image for all three services; docker-compose.yml picks the command.
FROM python:3.11-slim

# Two malloc arenas per process: the least memory of the allocators `make soak` compared
# (docs/performance.md); launcher/allocator.py gives `make run` the same.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 IMAGESVC_DATA_DIR=/data MALLOC_ARENA_MAX=2
WORKDIR /app

# The runtime dependencies first, at the locked versions (`make lock`), so code changes
# reuse this layer.
COPY requirements/runtime.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.txt

COPY pyproject.toml README.md ./
COPY gen ./gen
COPY protos ./protos
COPY common ./common
COPY cache ./cache
COPY processor ./processor
COPY gateway ./gateway
COPY launcher ./launcher
COPY imagesvc ./imagesvc
RUN pip install --no-cache-dir --no-deps . \
    && useradd --system --uid 10001 imagesvc \
    && mkdir -p /data && chown imagesvc /data

USER imagesvc
VOLUME ["/data"]
CMD ["python", "-m", "launcher"]
