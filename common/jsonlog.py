"""JSON-lines logging with the current request id, configured once per process."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import faulthandler
import fcntl
import logging
import os
import sys
import threading
import time
from typing import Any

import orjson

from common import process, tracing

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Attributes every LogRecord has; anything else was passed via `extra=` and is logged.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, pid, logger, message, request id,
    trace and span ids (within a span), extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        # (a second, its time as text): one attribute, so threads never see half of it.
        self._stamped = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        extras = {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            extras["exc"] = self.formatException(record.exc_info)
        return self.line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), extras
        )

    def line(
        self, created: float, level: str, logger: str, msg: str, extras: dict[str, Any]
    ) -> str:
        """The JSON line for one event (what format() makes of a record)."""
        second = int(created)
        stamped, stamp = self._stamped
        if second != stamped:  # strftime once a second, not once a line
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamped = (second, stamp)
        entry: dict[str, Any] = {
            "ts": f"{stamp}.{int((created - second) * 1000):03d}Z",
            "level": level,
            "service": self.service,
            # Tells replicas apart where their lines meet (several under one launcher).
            "pid": process.pid(),
            "logger": logger,
            "msg": msg,
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        entry.update(extras)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class HotLog:
    """Info lines written once per request (the gateway's access log): the same JSON as
    any other line, without building a LogRecord, which costs more than the rest of an
    answer from memory. Through logging as usual before configure() has run.

    In an event loop, the lines of one turn of the loop are written together as it ends:
    one system call for all the requests answered in that turn, not one per request.
    """

    def __init__(self, logger: str) -> None:
        self.logger = logging.getLogger(logger)
        self._lines: list[str] = []

    def info(self, msg: str, fields: dict[str, Any]) -> None:
        handler = _handler
        if handler is None or not isinstance(handler.formatter, JsonFormatter):
            self.logger.info(msg, extra=fields)
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._lines.append(
            handler.formatter.line(time.time(), "info", self.logger.name, msg, fields)
        )
        if len(self._lines) > 1:
            return  # written with the first of this turn's lines
        try:
            asyncio.get_running_loop().call_soon(self._write, handler)
        except RuntimeError:  # no event loop: now
            self._write(handler)

    def _write(self, handler: logging.StreamHandler[Any]) -> None:
        lines, self._lines = self._lines, []
        with handler.lock:  # type: ignore[union-attr]  # a StreamHandler always has one
            handler.stream.write("\n".join(lines) + "\n")
            handler.stream.flush()


_handler: logging.StreamHandler[Any] | None = None

# Start, stop and recovery lines: always logged, whatever the level (tools and tests
# read the "listening" line to learn the port).
lifecycle = logging.getLogger("lifecycle")


def configure(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines tagged with service."""
    global _handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _handler = handler
    root.setLevel(level.upper())
    lifecycle.setLevel(logging.INFO)


def capture_native_output() -> None:
    """Turn what C libraries write to descriptor 2 into log records.

    libtiff, for one, prints a line to stderr for every damaged TIFF it meets; raw
    text would break the JSON lines. Descriptor 2 becomes a pipe whose lines a thread
    logs (logger "native"); Python's own sys.stderr keeps the real one, so call this
    before configure(). Once per process; not for processes that start others.

    The pipe never blocks a writer (a full pipe drops the line: a C library holding the
    GIL could otherwise wait on a relay that needs it), and if the relay stops, the
    real stderr is put back. Python's fatal-error tracebacks (faulthandler) go to the
    real stderr, so a crash is never lost in the pipe.
    """
    global _captured
    if _captured:
        return
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # Linux: room for bursts
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    os.set_blocking(write, False)
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = os.fdopen(real, "w", buffering=1, errors="backslashreplace")
    faulthandler.enable(sys.stderr)
    threading.Thread(target=_relay, args=(read, real), name="native-output", daemon=True).start()
    _captured = True


_captured = False
PIPE_BYTES = 1024 * 1024
LINE_CHARS = 4096  # a longer line is cut: one record per line, bounded


def _relay(fd: int, real: int) -> None:
    native = logging.getLogger("native")
    pending = b""
    try:
        while chunk := os.read(fd, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > LINE_CHARS:
                lines.append(pending)
                pending = b""
            for raw in lines:
                line = raw[:LINE_CHARS].decode(errors="replace").rstrip()
                if line:
                    native.warning(line)
    finally:
        os.dup2(real, 2)  # whatever stopped the relay, C output goes somewhere again
