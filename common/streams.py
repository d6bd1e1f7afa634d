"""Client-streamed uploads: a head message, then bytes in chunks, within a limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from common.errors import Reason, ServiceError, invalid_argument

H = TypeVar("H")


def payload_too_large(limit: int, what: str) -> ServiceError:
    return ServiceError(
        Reason.PAYLOAD_TOO_LARGE,
        f"the {what} is larger than the limit of {limit} bytes",
        {"limit": str(limit)},
    )


async def receive(
    requests: AsyncIterator[Any],
    head: str,
    limit: int,
    what: str,
    parse: Callable[[Any], H],
) -> tuple[H, bytes]:
    """parse(the `head` field of the first message) and the chunks after it, joined.

    Messages have a oneof `payload` of `head` or `chunk`. parse runs as soon as the head
    arrives, so a bad head is refused before any bytes are read. Refuses, naming the
    field, a stream that does not start with the head or repeats it; and, as soon as the
    limit is passed, one with more than limit bytes.
    """
    parsed: Any = None
    seen = False
    data = bytearray()
    async for message in requests:
        kind = message.WhichOneof("payload")
        if not seen:
            if kind != head:
                raise invalid_argument(head, f"the first message must be the {head}")
            parsed, seen = parse(getattr(message, head)), True
            continue
        if kind != "chunk":
            raise invalid_argument(head, f"only the first message may be the {head}")
        if len(data) + len(message.chunk) > limit:
            raise payload_too_large(limit, what)
        data += message.chunk
    if not seen:
        raise invalid_argument(head, f"the stream carried no {head}")
    if not data:
        raise invalid_argument("chunk", f"the {what} holds no bytes")
    return parsed, bytes(data)
