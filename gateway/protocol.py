"""uvicorn's HTTP protocol, with its own refusals of malformed requests as problem+json.

Requests that do not parse as HTTP (raw non-ASCII or control bytes in the target, a
request line too long) never reach the app: uvicorn answers them itself, in plain text.
This gives them the same RFC 9457 body as every other error.
"""

from __future__ import annotations

import json
import uuid

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.problems import PROBLEM_JSON, HTTPProblem, problem_body


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        problem = HTTPProblem(400, "Bad request", msg, kind="bad-request")
        body = json.dumps(problem_body(problem)).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            # As on every answer, though no request id can be read from such a request.
            b"x-request-id: " + uuid.uuid4().hex.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
