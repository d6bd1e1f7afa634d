"""OpenTelemetry traces: on when the standard OTEL_* variables name an exporter.

Off (the default), nothing is set up: the API's no-op tracer stays, and no gRPC
interceptor or HTTP middleware is added, so a call costs what it did without tracing.
On, the SDK configures itself from the OTEL_* variables as `opentelemetry-instrument`
would (exporter and protocol, endpoint, headers, sampler, batching, resource), and
every gRPC server and client and the gateway's HTTP app start spans, passing the
W3C `traceparent` along with each call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from common.env import ConfigError

# Never traced: probes and tooling (health checks every few seconds would bury the
# requests), and the deletion watch, one call that lasts as long as its process.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")
UNTRACED_METHODS = ("WatchDeletions",)

_on: bool | None = None  # None: not configured yet in this process


def wanted(environ: Mapping[str, str]) -> str | None:
    """The trace exporters asked for (OTEL_TRACES_EXPORTER), or None for no tracing:
    unset (but an OTLP endpoint set means the spec's default, `otlp`), `none`, or the
    SDK disabled (OTEL_SDK_DISABLED=true)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return "otlp" if any(environ.get(name, "").strip() for name in endpoints) else None
    return None if names.lower() == "none" else names


def configure(service: str) -> bool:
    """Set up tracing for this process when the environment asks for it (once; later
    calls say what the first decided); whether it is on. ConfigError for an exporter or
    protocol the SDK does not know."""
    global _on
    if _on is not None:
        return _on
    names = wanted(os.environ)
    _on = names is not None
    if names is None:
        return False
    # The SDK reads the exporter's name from the environment only.
    os.environ.setdefault("OTEL_TRACES_EXPORTER", names)
    # Imported here: a process that does not trace never loads the SDK.
    from opentelemetry.distro import OpenTelemetryConfigurator
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    attributes: dict[str, Any] = {}
    named = str(Resource.create().attributes.get(SERVICE_NAME, ""))
    if named.startswith("unknown_service"):  # neither OTEL_SERVICE_NAME nor the resource's
        attributes[SERVICE_NAME] = f"imagesvc-{service}"
    try:
        OpenTelemetryConfigurator().configure(resource_attributes=attributes)  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as exc:  # an exporter or protocol it has no entry for
        _on = False
        raise ConfigError(f"OTEL_TRACES_EXPORTER={names}: {exc}") from None
    return True


def on() -> bool:
    """Whether configure() turned tracing on in this process."""
    return bool(_on)


def _traced() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    untraced = [filters.service_prefix(name) for name in UNTRACED_SERVICES]
    untraced += [filters.method_name(name) for name in UNTRACED_METHODS]
    return filters.negate(filters.any_of(*untraced))


def server_interceptors() -> list[Any]:
    """The gRPC server interceptor that starts a span per call (child of the caller's
    `traceparent`), when tracing is on; none when off."""
    if not _on:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_traced())]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any] | None:
    """The gRPC client interceptors that start a span per call and send its
    `traceparent`, when tracing is on; None when off."""
    if not _on:
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_traced()))  # type: ignore[no-untyped-call]


def current_ids() -> tuple[str, str] | None:
    """The active span's trace and span ids in hex, as W3C writes them; None outside one."""
    if _on is False:  # configured off: no span is ever started (asked on every log line)
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
