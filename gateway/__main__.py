"""`python -m gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile

import uvicorn
from uvicorn.supervisors import Multiprocess

from common import jsonlog, ports, tracing
from common.env import ConfigError
from gateway.config import Settings
from gateway.observability import MULTIPROCESS_VARIABLE
from gateway.protocol import ProblemHttpToolsProtocol


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"gateway: bad configuration: {exc}")
    jsonlog.configure("gateway", settings.log_level)
    try:
        tracing.configure("gateway")  # checked here, where a bad value can stop it plainly
    except ConfigError as exc:
        sys.exit(f"gateway: bad configuration: {exc}")
    # Bind here, so port 0 works and the chosen port can be announced before serving.
    try:
        sock = ports.bind(settings.host, settings.port)
    except OSError as exc:
        address = f"{settings.host}:{settings.port}"
        error = ports.unavailable(address, exc, "IMAGESVC_GATEWAY_PORT", "IMAGESVC_GATEWAY_HOST")
        sys.exit(f"gateway: {error}")
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        workers=settings.workers,
        access_log=False,  # the gateway logs each request itself, as JSON
        log_config=None,
        timeout_graceful_shutdown=10,
        # uvicorn's 5 s is httpx's (and others') own idle expiry: a client then sends on a
        # connection the gateway is closing, and gets no answer (2 of 20k requests in
        # `make soak`). Longer than the clients' and proxies' idle timeouts (60 s for AWS's
        # load balancers), as nginx's 75 s is, the gateway is never the one to close first.
        timeout_keep_alive=75,
        server_header=False,
        # Who the client is behind a proxy is IMAGESVC_TRUSTED_PROXIES' to say, not
        # uvicorn's (which would believe X-Forwarded-For from any loopback peer).
        proxy_headers=False,
        http=ProblemHttpToolsProtocol,  # malformed requests get problem+json too
    )
    jsonlog.lifecycle.info("listening", extra={"address": f"{settings.host}:{port}", "port": port})
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully, then re-raises the signal it caught to the handler
    # found at start: make that a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    if settings.workers > 1:
        # Every worker counts into files of this folder (the workers are spawned, so
        # they read the variable as they import prometheus_client), and each one's
        # /metrics answers for all of them. A folder of this run's own: files left by
        # an earlier run would be counted again.
        folder = tempfile.mkdtemp(prefix="imagesvc-gateway-metrics-")
        os.environ[MULTIPROCESS_VARIABLE] = folder
        try:
            Multiprocess(config, sockets=[sock]).run()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        server.run(sockets=[sock])


if __name__ == "__main__":
    main()
