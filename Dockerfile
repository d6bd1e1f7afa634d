# One image for all three services; docker-compose.yml picks the command.
FROM python:3.11-slim

# Two malloc arenas per process: the least memory of the allocators `make soak` compared
# (docs/performance.md); launcher/allocator.py gives `make run` the same.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 IMAGESVC_DATA_DIR=/data MALLOC_ARENA_MAX=2
WORKDIR /app

# Dependencies first, so code changes reuse this layer.
COPY pyproject.toml README.md ./
COPY gen ./gen
RUN mkdir -p cache common processor gateway launcher \
    && touch cache/__init__.py common/__init__.py processor/__init__.py \
       gateway/__init__.py launcher/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y imageservice

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
