"""`python -m common.healthcheck grpc HOST:PORT` or `... http URL`: exit 0 when healthy.

For container healthchecks and scripts: the gRPC form asks the standard health service
(overall status), over mutual TLS when the IMAGESVC_TLS_* variables say so (as the
service's own environment does in its container); the HTTP form expects a 200.
"""

from __future__ import annotations

import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.env import ConfigError
from common.grpcclient import blocking_channel
from common.tls import Tls


def grpc_healthy(address: str, tls: Tls | None, timeout: float = 2.0) -> bool:
    try:
        with blocking_channel(address, tls) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def http_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("grpc", "http"):
        print("usage: python -m common.healthcheck grpc HOST:PORT | http URL", file=sys.stderr)
        return 2
    if argv[0] == "http":
        return 0 if http_healthy(argv[1]) else 1
    try:
        tls = Tls.from_env()
    except ConfigError as exc:
        print(f"healthcheck: bad configuration: {exc}", file=sys.stderr)
        return 2
    return 0 if grpc_healthy(argv[1], tls) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
