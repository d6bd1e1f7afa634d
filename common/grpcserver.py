"""gRPC server wiring shared by the services: interceptor, health, reflection, signals."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common import tracing
from common.errors import ServiceError
from common.jsonlog import lifecycle, request_id
from common.metrics import MethodMetrics, ServiceMetrics
from common.ports import AddressUnavailable, check
from common.settings import MAX_MESSAGE_BYTES
from common.tls import Tls

log = logging.getLogger("grpc")

REQUEST_ID_KEY = "x-request-id"
# A client balances over the addresses it resolved when it connected, and resolves again
# only when a connection ends: a connection this old is sent GOAWAY (gRPC adds +-10%
# jitter, so clients do not all move at once), and the client's next calls go over new
# connections, to every replica the name now has, including those added since. New calls
# never fail for it: they go to the new connections, and only calls already open stay.
MAX_CONNECTION_AGE_SECONDS = 60.0
# Calls open at GOAWAY are never cut (gRPC's own default, stated here). A finite grace
# would end every WatchDeletions stream at age + grace, and each end makes its watcher
# forget its whole hot cache (what was deleted meanwhile cannot be known): every gateway
# worker and processor would lose its hot cache every few minutes. It would also cut
# long uploads (the gateway allows one 900 s, IMAGESVC_UPLOAD_TIMEOUT_SECONDS) and
# GetImage streams to slow readers. Every other call ends by its own deadlines, so the
# old connection closes once its watch does (the watcher's process stops, or the
# replica: then it re-watches within 0.2 s on a new connection).
MAX_CONNECTION_AGE_GRACE_SECONDS: float | None = None
UNLIMITED_MS = 2**31 - 1  # gRPC's "infinite" for its millisecond options


def _incoming_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Per call: binds the request id, turns ServiceError into a rich status, logs one
    line and, with metrics, counts the call by its status and times it."""

    def __init__(self, metrics: ServiceMetrics | None = None) -> None:
        self._metrics = metrics
        # Per method, the handler grpc found and our wrapping of it: wrapped once, not
        # on every call (what runs before a handler starts is on every call's path).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # unknown method: grpc says UNIMPLEMENTED
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        series = None if self._metrics is None else self._metrics.method(method)
        wrapped = _wrap(handler, method, series)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(
    handler: Any, method: str, series: MethodMetrics | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """handler with each call run inside a _Call."""
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    # Streaming handlers are either async generators or coroutines that call
    # context.write() (as the health service's Watch does); wrap each as it is.
    if inspect.isasyncgenfunction(behavior):
        wrapped: Any = _wrap_stream(behavior, method, series)
    else:
        wrapped = _wrap_unary(behavior, method, series)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(wrapped, handler.request_deserializer, handler.response_serializer)


class _Call:
    """Binds the request id for the life of one call and logs how it ended."""

    def __init__(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        series: MethodMetrics | None,
    ):
        self.method, self.context, self.series = method, context, series
        self.rid = _incoming_request_id(context.invocation_metadata())
        self.code = grpc.StatusCode.OK
        self.error = ""
        self.ms: float | None = None  # the handler's time, once it has returned

    def __enter__(self) -> _Call:
        self.token = request_id.set(self.rid)
        self.start = time.perf_counter()
        # Logged as the call ends, its status sent, and so also when the caller hangs
        # up on a stream, whose handler grpc leaves for the garbage collector to close.
        # Registered while the handler runs: grpc runs a call's callbacks once, as it
        # ends. The line carries the request id: it runs in the call's context.
        call = contextvars.copy_context()
        self.context.add_done_callback(
            # The stubs name a class here; grpc takes any callable of the context.
            cast("grpc.aio.DoneCallback[Any, Any]", lambda _: call.run(self._log))
        )
        return self

    async def fail(self, exc: Exception) -> None:
        if isinstance(exc, ServiceError):
            self.code, self.error = exc.code, exc.reason.value
            if exc.detail:
                log.warning("%s: %s", exc.message, exc.detail, extra={"method": self.method})
            status = exc.to_status()
            await self.context.abort(status.code, status.details, status.trailing_metadata)
        self.code, self.error = grpc.StatusCode.INTERNAL, type(exc).__name__
        log.exception("unhandled error in %s", self.method)
        await self.context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def __exit__(self, *exc: object) -> None:
        # A stream whose caller has gone is closed with GeneratorExit.
        if exc[0] in (asyncio.CancelledError, GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
        elif exc[0] is not None and self.code == grpc.StatusCode.OK:
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN
        self.ms = round((time.perf_counter() - self.start) * 1000, 2)
        # A stream abandoned mid-answer is closed later by asyncio, in another context,
        # where the token cannot be reset (and needs not be: that context is its own).
        with contextlib.suppress(ValueError):
            request_id.reset(self.token)

    def _log(self) -> None:
        code, ms = self.code, self.ms
        if ms is None:  # the call ended with its handler still running: the caller left
            code = grpc.StatusCode.CANCELLED
            ms = round((time.perf_counter() - self.start) * 1000, 2)
        if self.series is not None:
            self.series.ended(code, ms / 1000)
        extra = {"method": self.method, "code": code.name, "reason": self.error, "ms": ms}
        log.info("rpc", extra=extra)


def _wrap_unary(
    behavior: Callable[[Any, Any], Awaitable[Any]], method: str, series: MethodMetrics | None
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with _Call(method, context, series) as call:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await call.fail(exc)

    return wrapper


def _wrap_stream(
    behavior: Callable[[Any, Any], AsyncIterator[Any]], method: str, series: MethodMetrics | None
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with _Call(method, context, series) as call:
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await call.fail(exc)

    return wrapper


def create_server(
    max_connection_age_seconds: float = MAX_CONNECTION_AGE_SECONDS,
    max_connection_age_grace_seconds: float | None = MAX_CONNECTION_AGE_GRACE_SECONDS,
    metrics: ServiceMetrics | None = None,
) -> tuple[grpc.aio.Server, Any]:
    """A grpc.aio server with the call interceptor (counting into metrics, when given;
    inside the tracing one, when tracing is on) and the standard health service, taking
    messages up to MAX_MESSAGE_BYTES (a chunk and its envelope), and asking clients to
    reconnect once a connection is max_connection_age_seconds old (its open calls given
    the grace, None for as long as they take)."""
    grace_ms = (
        UNLIMITED_MS
        if max_connection_age_grace_seconds is None
        else round(max_connection_age_grace_seconds * 1000)
    )
    options = [
        # gRPC sets SO_REUSEPORT by default on Linux: a second server on a port in use
        # then starts and takes half the calls (to another data directory, for a cache).
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_connection_age_ms", round(max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", grace_ms),
    ]
    # The span outermost: the call's log line, written within it, carries its trace id.
    interceptors = [*tracing.server_interceptors(), CallInterceptor(metrics)]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


async def listen(server: grpc.aio.Server, address: str, variable: str, tls: Tls | None) -> int:
    """Bind server to address (from the variable named), over mutual TLS when tls is
    set, and return its port; raise AddressUnavailable, saying why, when it cannot."""
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.server_credentials())
    except RuntimeError:  # grpc's message says nothing of why; older versions return 0
        port = 0
    if port:
        return port
    await server.stop(None)  # a server dropped unstopped complains as the process exits
    check(address, variable)  # raises, with the reason, when a plain bind fails too
    raise AddressUnavailable(address, variable, "grpc could not bind it")


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve grpc.reflection for the given services and the health service."""
    names = (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)


async def serve_until_signalled(
    server: grpc.aio.Server,
    health_servicer: Any,
    service_names: Iterable[str],
    grace_seconds: float,
) -> None:
    """Mark SERVING, wait for SIGTERM/SIGINT, go NOT_SERVING, then let calls finish."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await stop.wait()
    lifecycle.info("shutting down", extra={"grace_seconds": grace_seconds})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_seconds)
    lifecycle.info("stopped")
