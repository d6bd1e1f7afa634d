"""gRPC client channels as the services use them: retries only where idempotent."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import grpc

from common import tracing
from common.env import ConfigError, Env
from common.errors import Reason, ServiceError, remote_error
from common.jsonlog import request_id
from common.settings import MAX_MESSAGE_BYTES
from common.tls import Tls


def _family(address: str) -> str | None:
    """The gRPC scheme of an IPv4:port or [IPv6]:port address, None for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    if ip.version == 4 and not bracketed:
        return "ipv4"
    return "ipv6" if ip.version == 6 and bracketed else None


def target(addresses: Sequence[str]) -> str:
    """One gRPC target for every replica of a service: a target URI as given, a DNS name
    (dns:///, so every address it resolves to is used), or a list of IP:port; ValueError
    for a list that names a host or mixes IPv4 and IPv6 (gRPC resolves neither)."""
    if len(addresses) == 1:
        address = addresses[0]
        return address if "://" in address else f"dns:///{address}"
    families = {_family(a) for a in addresses}
    if len(families) != 1 or None in families:
        raise ValueError(
            "a list takes IP:port addresses of one family; name replicas behind one DNS "
            "name instead"
        )
    return f"{families.pop()}:" + ",".join(addresses)


def addresses(env: Env, name: str, default: str) -> tuple[str, ...]:
    """IMAGESVC_<name>: one address or DNS name, or a comma list of IP:port, each a
    replica; ConfigError, naming the variable, for none or one gRPC cannot use."""
    found = env.items(name, (default,))
    if not found:
        raise ConfigError(f"IMAGESVC_{name} names no address")
    try:
        target(found)
    except ValueError as exc:
        raise ConfigError(f"IMAGESVC_{name}={','.join(found)}: {exc}") from None
    hosts = {address.rpartition(":")[0] for address in found}
    if len(hosts) > 1 and env.raw("TLS_CERT") and not env.raw("TLS_SERVER_NAME"):
        # gRPC checks every replica of a list against one name (see _name_checked).
        raise ConfigError(
            f"IMAGESVC_{name} lists replicas on several hosts: over TLS, set "
            "IMAGESVC_TLS_SERVER_NAME to a name all their certificates carry"
        )
    return found


def service_config(service: str, idempotent: Sequence[str]) -> str:
    """Round-robin over every address of the target that says it is SERVING, and retries
    on UNAVAILABLE for the named (idempotent) methods only."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            # Each connection watches its server's health (grpc.health.v1 Watch): a replica
            # that goes NOT_SERVING, as one does the moment it is told to stop, leaves the
            # rotation while its calls in flight finish, and rejoins once SERVING again.
            # A call that still meets it stopping fails UNAVAILABLE and is retried below.
            "healthCheckConfig": {"serviceName": ""},
            "methodConfig": [
                {
                    "name": [{"service": service, "method": m} for m in idempotent],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def _name_checked(target: str, tls: Tls) -> str | None:
    """What the server's certificate must name, when not the host dialled: gRPC checks a
    list's every replica against the list as a whole, which no certificate names."""
    if tls.server_name is not None:
        return tls.server_name
    scheme, _, rest = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in rest:
        return None
    hosts = {address.rpartition(":")[0].strip("[]") for address in rest.split(",")}
    # addresses() refuses a list over several hosts without IMAGESVC_TLS_SERVER_NAME.
    return hosts.pop() if len(hosts) == 1 else None


def _tls_options(target: str, tls: Tls | None) -> list[tuple[str, str | int]]:
    name = None if tls is None else _name_checked(target, tls)
    return [] if name is None else [("grpc.ssl_target_name_override", name)]


def open_channel(
    target: str, service: str, idempotent: Sequence[str], tls: Tls | None
) -> grpc.aio.Channel:
    """An aio channel with the service config, the message limit for chunked streams, and a
    quick reconnect when a service comes back (instead of gRPC's 2-minute backoff cap);
    over mutual TLS when tls is set, else in plaintext; each call a span, when tracing
    is on."""
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", service_config(service, idempotent)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        *_tls_options(target, tls),
    ]
    interceptors = tracing.client_interceptors()
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=options, interceptors=interceptors
    )


def blocking_channel(address: str, tls: Tls | None) -> grpc.Channel:
    """A synchronous channel to one address, with gRPC's defaults (health checks, tools),
    over mutual TLS when tls is set."""
    options = _tls_options(address, tls)
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)


def call_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata passing the current request id on to the next service."""
    rid = request_id.get()
    return (("x-request-id", rid),) if rid else ()


def upstream_error(error: grpc.aio.AioRpcError, upstream: str) -> ServiceError:
    """Re-raise an upstream failure as our own error, keeping its reason where it has one."""
    remote = remote_error(error)
    if remote.reason in Reason.__members__:
        return ServiceError(Reason(remote.reason), remote.message, remote.metadata)
    if remote.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = (
            Reason.UPSTREAM_UNAVAILABLE
            if remote.code == grpc.StatusCode.UNAVAILABLE
            else Reason.DEADLINE_EXCEEDED
        )
        return ServiceError(
            reason, f"the {upstream} service did not answer", {"upstream": upstream}
        )
    return ServiceError(Reason.INTERNAL, f"the {upstream} service failed", {"upstream": upstream})
