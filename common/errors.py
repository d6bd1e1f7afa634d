"""Service errors as google.rpc.Status with an ErrorInfo reason, both ways."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "imageservice.v1"
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


class Reason(StrEnum):
    """The ErrorInfo reasons of the contract (see protos/imageservice/v1/cache_service.proto)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    CORRUPT_IMAGE = "CORRUPT_IMAGE"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    CROP_OUTSIDE_IMAGE = "CROP_OUTSIDE_IMAGE"
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    OVERLOADED = "OVERLOADED"
    INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    INTERNAL = "INTERNAL"


# One status code per reason, so callers and the gateway's HTTP mapping agree.
CODES: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNSUPPORTED_MEDIA_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.CORRUPT_IMAGE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.IMAGE_TOO_LARGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.PAYLOAD_TOO_LARGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.OUTPUT_TOO_LARGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.CROP_OUTSIDE_IMAGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.IMAGE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.INSUFFICIENT_STORAGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.UPSTREAM_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


@dataclass
class ServiceError(Exception):
    """Raised by domain code; the server interceptor turns it into a rich gRPC status."""

    reason: Reason
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    # What went wrong in words not fit for the caller (hosts, engines' own messages):
    # logged by the interceptor, never sent.
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    @property
    def code(self) -> grpc.StatusCode:
        return CODES[self.reason]

    def to_status(self) -> grpc.Status:
        """The grpc.Status to abort with: code, message and an ErrorInfo detail."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason.value, domain=DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        )
        if self.reason == Reason.UPSTREAM_UNAVAILABLE:
            # This server is up; what it depends on (an engine, another service) is not,
            # and every replica would say the same: a negative pushback tells gRPC's
            # client not to spend the caller's deadline on retries.
            status = _Status(status.code, status.details, (*status.trailing_metadata, NO_RETRY))
        return status


def invalid_argument(field_name: str, message: str) -> ServiceError:
    """A bad request field; ErrorInfo metadata names the field."""
    return ServiceError(Reason.INVALID_ARGUMENT, message, {"field": field_name})


@dataclass(frozen=True)
class RemoteError:
    """What a client learns from a failed call: code, message, reason and metadata."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]


def remote_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> RemoteError:
    """Decode the ErrorInfo from a failed call (reason is "" when there is none)."""
    code = error.code()
    message = error.details() or ""
    trailing = cast(Sequence[tuple[str, Any]], error.trailing_metadata() or ())
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return RemoteError(code, status.message, info.reason, dict(info.metadata))
    return RemoteError(code, message, "", {})
