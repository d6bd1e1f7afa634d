"""What the client raises: the gateway's RFC 9457 problem, whole, or why it was not reached."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"


class ImageServiceError(Exception):
    """Every error this package raises."""


class ServiceUnreachable(ImageServiceError):
    """The gateway did not answer: refused, reset, timed out, or no such host."""


class InvalidParameter(ImageServiceError, ValueError):
    """A transformation parameter the client refuses before asking (unknown name, or a
    value of the wrong shape); `parameter` names it, as the gateway's 400 would."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class ProblemError(ImageServiceError):
    """An error answer, with its problem body (`problem`: type, title, status, detail,
    instance, and parameter, reason, limit... where the gateway gives them)."""

    def __init__(self, status: int, problem: dict[str, Any], headers: httpx.Headers) -> None:
        self.status = status
        self.problem = problem
        self.headers = headers
        super().__init__(self.line())

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or "")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")

    @property
    def type(self) -> str:
        return str(self.problem.get("type") or "about:blank")

    @property
    def parameter(self) -> str | None:
        value = self.problem.get("parameter")
        return None if value is None else str(value)

    @property
    def reason(self) -> str | None:
        value = self.problem.get("reason")
        return None if value is None else str(value)

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before trying again (429, 503), when the answer says."""
        value = self.headers.get("retry-after", "")
        return float(value) if value.isdigit() else None

    def line(self) -> str:
        """One line saying what went wrong: `404 Not found: no such image`."""
        said = self.detail or self.title
        return (
            f"{self.status} {self.title}: {said}" if said != self.title else f"{self.status} {said}"
        )


class BadRequest(ProblemError):
    """400: a bad parameter (`parameter` names it) or body."""


class Unauthorized(ProblemError):
    """401: no key or token, or a wrong or expired one."""


class Forbidden(ProblemError):
    """403: a scope missing, another's image, or a refused signature (`reason`)."""


class NotFound(ProblemError):
    """404: no such image, or one the caller may not see."""


class PayloadTooLarge(ProblemError):
    """413: over the byte, pixel or frame limits."""


class UnsupportedMediaType(ProblemError):
    """415: not an image, or a format the service does not take."""


class UnprocessableImage(ProblemError):
    """422: corrupt image data, or a transformation that does not fit this image."""


class RateLimited(ProblemError):
    """429: the caller's budget is spent; see retry_after."""


class ServiceUnavailable(ProblemError):
    """503: a service is down or overloaded; see retry_after."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: UnprocessableImage,
    429: RateLimited,
    503: ServiceUnavailable,
}


def problem_of(response: httpx.Response) -> ProblemError:
    """The exception an error answer stands for. A body that is no problem (a proxy's
    page) is made into one from the status line and the start of the text."""
    problem: dict[str, Any] | None = None
    if response.headers.get("content-type", "").startswith(PROBLEM_JSON):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            problem = body
    if problem is None:
        problem = {
            "type": "about:blank",
            "title": response.reason_phrase or "Error",
            "status": response.status_code,
            "detail": response.text[:200].strip(),
        }
    kind = _BY_STATUS.get(response.status_code, ProblemError)
    return kind(response.status_code, problem, response.headers)
