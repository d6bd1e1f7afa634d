"""Client-streamed uploads: a head message, then bytes in chunks, within a limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from common.errors import Reason, ServiceError, invalid_argument


def too_large(limit: int, what: str) -> ServiceError:
    return ServiceError(
        Reason.PAYLOAD_TOO_LARGE,
        f"the {what} is larger than the limit of {limit} bytes",
        {"limit": str(limit)},
    )


async def receive(
    requests: AsyncIterator[Any], head: str, limit: int, what: str
) -> tuple[Any, bytes]:
    """The `head` field of the first message and the chunks after it, joined.

    Messages have a oneof `payload` of `head` or `chunk`. Refuses, naming the field, a
    stream that does not start with the head or repeats it; and, as soon as the limit
    is passed, one with more than limit bytes.
    """
    first: Any = None
    data = bytearray()
    async for message in requests:
        kind = message.WhichOneof("payload")
        if first is None:
            if kind != head:
                raise invalid_argument(head, f"the first message must be the {head}")
            first = getattr(message, head)
            continue
        if kind != "chunk":
            raise invalid_argument(head, f"only the first message may be the {head}")
        if len(data) + len(message.chunk) > limit:
            raise too_large(limit, what)
        data += message.chunk
    if first is None:
        raise invalid_argument(head, f"the stream carried no {head}")
    if not data:
        raise invalid_argument("chunk", f"the {what} holds no bytes")
    return first, bytes(data)
