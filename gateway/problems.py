"""RFC 9457 problem responses, and the gRPC to HTTP error mapping of DESIGN.md."""

from __future__ import annotations

from typing import Any

import grpc
from starlette.responses import JSONResponse

from common.errors import Reason, remote_error
from processor import parameters

PROBLEM_JSON = "application/problem+json"


class HTTPProblem(Exception):
    """Raised by handlers; rendered as application/problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        kind: str = "",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}
        self.extensions = extensions


def problem_body(problem: HTTPProblem, instance: str = "") -> dict[str, Any]:
    """The RFC 9457 document for problem."""
    body: dict[str, Any] = {
        "type": f"/problems/{problem.kind}" if problem.kind else "about:blank",
        "title": problem.title,
        "status": problem.status,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    body.update(problem.extensions)
    return body


def problem_response(problem: HTTPProblem, instance: str = "") -> JSONResponse:
    return JSONResponse(
        problem_body(problem, instance),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


# (status, title, problem kind) for the reasons the services give.
_BY_REASON: dict[str, tuple[int, str, str]] = {
    Reason.INVALID_ARGUMENT: (400, "Bad request", "invalid-parameter"),
    Reason.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported media type", "unsupported-media-type"),
    Reason.CORRUPT_IMAGE: (422, "Corrupt image", "corrupt-image"),
    Reason.IMAGE_TOO_LARGE: (413, "Image too large", "image-too-large"),
    Reason.PAYLOAD_TOO_LARGE: (413, "Content too large", "payload-too-large"),
    # 422: the request is sound on its face (its schema allows it) but does not fit
    # this image.
    Reason.OUTPUT_TOO_LARGE: (422, "Requested output too large", "output-too-large"),
    Reason.CROP_OUTSIDE_IMAGE: (422, "Crop outside the image", "crop-outside-image"),
    Reason.IMAGE_NOT_FOUND: (404, "Not found", "not-found"),
    Reason.PERMISSION_DENIED: (403, "Forbidden", "forbidden"),
    Reason.OVERLOADED: (503, "Service overloaded", "overloaded"),
    # 507, not 503: no retry helps until an operator makes room.
    Reason.INSUFFICIENT_STORAGE: (507, "Insufficient storage", "insufficient-storage"),
    Reason.UPSTREAM_UNAVAILABLE: (503, "Service unavailable", "unavailable"),
    Reason.DEADLINE_EXCEEDED: (504, "Processing timed out", "timeout"),
}
_BY_CODE: dict[grpc.StatusCode, tuple[int, str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Bad request", "invalid-parameter"),
    grpc.StatusCode.OUT_OF_RANGE: (413, "Content too large", "payload-too-large"),
    grpc.StatusCode.FAILED_PRECONDITION: (413, "Content too large", "payload-too-large"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found", "not-found"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "Unauthenticated", "unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Forbidden", "forbidden"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "Service overloaded", "overloaded"),
    grpc.StatusCode.UNAVAILABLE: (503, "Service unavailable", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "Upstream timed out", "timeout"),
    grpc.StatusCode.CANCELLED: (503, "Service unavailable", "unavailable"),
}
_RETRY = {503}
_SERVER_DETAILS = {
    502: "a service answered in a way the gateway did not expect",
    503: "a service is unavailable or overloaded",
    504: "a service took longer than allowed",
    507: "there is no room left to store it",
}
# The processor names request fields; callers of the gateway know query parameters.
QUERY_NAMES = parameters.query_names() | {
    "original_filename": "filename",  # of a raw upload's query, or a multipart file's
}


def not_found(parameter: str) -> HTTPProblem:
    """The 404 for another image a parameter names (wm) that is missing or that the
    caller may not read: one answer for both."""
    return HTTPProblem(
        404, "Not found", f"{parameter}: no such image", kind="not-found", parameter=parameter
    )


def from_grpc(error: grpc.aio.AioRpcError, retry_after: int) -> HTTPProblem:
    """The HTTP problem for a failed call, by ErrorInfo reason first, then by code."""
    remote = remote_error(error)
    status, title, kind = _BY_REASON.get(remote.reason) or _BY_CODE.get(
        remote.code, (502, "Bad gateway", "upstream-error")
    )
    headers = {"Retry-After": str(retry_after)} if status in _RETRY else {}
    # A service's own words for a client's fault; ours for the rest (a failing service's
    # message may name addresses and internals).
    detail = remote.message if 400 <= status < 500 else _SERVER_DETAILS.get(status, "")
    if status == 503:
        detail += f"; retry after {retry_after} s"
    extensions: dict[str, Any] = {}
    if remote.reason:
        extensions["reason"] = remote.reason
    if "field" in remote.metadata:
        field = remote.metadata["field"]
        extensions["parameter"] = QUERY_NAMES.get(field, field)
        # Worded as the gateway's own refusals are: "blur: must be between 0 and 50".
        detail = f"{extensions['parameter']}: {detail}"
    elif kind == "invalid-parameter":
        kind = "bad-request"  # a bad request that no one parameter is to blame for
    if status == 404:
        # The same answer whatever is missing, or hidden: nothing leaks. The image a
        # parameter names (a watermark's, which the gateway let the caller read) is named.
        if "parameter" in extensions:
            return not_found(extensions["parameter"])
        return HTTPProblem(404, "Not found", "no such image", kind="not-found")
    return HTTPProblem(status, title, detail, kind=kind, headers=headers, **extensions)
