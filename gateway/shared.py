"""Answers any caller may have, served from the gateway's memory before routing.

Like a shared HTTP cache in front of the app: a GET or HEAD of /images/{id} that
presents no credential and whose query and Accept match an answer held as shared
(public, drawing no other image; see answers.Entry) is answered here at once. Anything
else goes on to the routes, which answer from the same memory too once they have
checked the caller (gateway/images.py). A signed URL's signature is checked here as
the routes would check it. Request ids, metrics and the access log come from
Observability, outside this.
"""

from __future__ import annotations

import time

from starlette.datastructures import QueryParams
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from common.caller import ANONYMOUS, EVERYONE
from common.hotcache import HotCache
from gateway import signing
from gateway.answers import Entry, answer_key, from_memory
from gateway.config import Settings
from gateway.observability import Metrics
from gateway.problems import HTTPProblem

PREFIX = "/images/"
CREDENTIALS = (b"authorization", b"x-api-key")


class SharedAnswers:
    """Pure ASGI middleware answering held shared answers; see the module's docstring."""

    def __init__(self, app: ASGIApp, settings: Settings, route: BaseRoute, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.route = route  # the route these answers stand for, in metrics and logs
        self.tally = metrics.tally
        self.hits = metrics.variants.labels("gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held = self._held(scope) if scope["type"] == "http" else None
        if held is None:
            await self.app(scope, receive, send)
            return
        entry, if_none_match = held
        scope["route"] = self.route
        if scope["query_string"]:  # a variant: the routes count these hits the same way
            self.tally.inc(self.hits)
        await from_memory(entry, scope["method"], if_none_match)(scope, receive, send)

    def _held(self, scope: Scope) -> tuple[Entry, str | None] | None:
        """The shared answer held for this request, and its If-None-Match; None when the
        routes must answer it."""
        path: str = scope["path"]
        if scope["method"] not in ("GET", "HEAD") or not path.startswith(PREFIX):
            return None
        image_id = path[len(PREFIX) :]
        if not image_id or "/" in image_id:
            return None
        accept = if_none_match = None
        for name, value in scope["headers"]:
            if name in CREDENTIALS:
                return None  # verified by the routes (a token, a key; or refused)
            if name == b"accept" and accept is None:
                accept = value.decode("latin-1")
            elif name == b"if-none-match" and if_none_match is None:
                if_none_match = value.decode("latin-1")
        query_string: bytes = scope["query_string"]
        if (
            self.settings.signing.enabled
            and query_string
            and not self._signing_allows(image_id, query_string)
        ):
            return None  # the routes refuse it, saying why
        hot: HotCache[Entry] = scope["state"]["hot"]
        entry = hot.get(image_id, answer_key(query_string, accept or ""))
        if entry is None or not entry.shared:
            return None
        return entry, if_none_match

    def _signing_allows(self, image_id: str, query_string: bytes) -> bool:
        """Whether the routes' signature check would let a caller without a credential
        read this (the check images._reader makes)."""
        caller = ANONYMOUS if self.settings.auth_enabled else EVERYONE
        query = QueryParams(query_string).multi_items()
        try:
            signing.reader(self.settings.signing, PREFIX + image_id, query, caller, time.time())
        except HTTPProblem:
            return False
        return True
