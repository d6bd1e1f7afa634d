"""Listen addresses: whether one can be listened on, and one clear line when it cannot."""

from __future__ import annotations

import errno
import socket


class AddressUnavailable(Exception):
    """A service cannot listen where its settings say; the message names the variable."""

    def __init__(self, address: str, variable: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} ({variable}): {reason}")


def unavailable(
    address: str, exc: OSError, variable: str, host_variable: str | None = None
) -> AddressUnavailable:
    """The error for a failed bind, in words a user can act on; it names host_variable,
    when given, for a host that is not one of this machine's."""
    if exc.errno == errno.EADDRINUSE:
        return AddressUnavailable(address, variable, "address in use")
    why = (exc.strerror or str(exc)).lower()
    return AddressUnavailable(address, host_variable or variable, why)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) the way the servers bind theirs (SO_REUSEADDR, so a
    recently closed connection does not count as a user)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def split(address: str) -> tuple[str, int] | None:
    """("127.0.0.1", 50051) from a gRPC listen address; None for one that is not
    host:port (a unix: socket)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or host.startswith("unix"):
        return None
    return host.strip("[]"), int(port)


def check(address: str, variable: str, host_variable: str | None = None) -> None:
    """Raise AddressUnavailable (see unavailable) if nothing could listen on address now."""
    parts = split(address)
    if parts is None:
        return
    try:
        bind(*parts).close()
    except OSError as exc:
        raise unavailable(address, exc, variable, host_variable) from None
