"""Shared answers: what any caller without a credential may have, served before routing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from imageservice.v1 import image_pb2
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from common.env import Env
from common.hotcache import HotCache
from common.urlsigning import SigningKey, sign
from gateway.answers import Entry, answer_cache, answer_key
from gateway.config import Settings
from gateway.observability import Metrics
from gateway.shared import SharedAnswers
from tests.support import ServiceProcess, is_problem, png_bytes

IMAGE = "AAAAAAAAAAAAAAAAAAAAAA"
KEY = "k1"
SECRET = "s" * 40
PUBLIC = image_pb2.VISIBILITY_PUBLIC
PRIVATE = image_pb2.VISIBILITY_PRIVATE
ALICE = "alice-key-0123456789"


def held(hot: HotCache[Entry], query: bytes, accept: str = "", **entry: Any) -> Entry:
    """An answer put in memory as the routes would keep it."""
    fields: dict[str, Any] = {
        "body": b"held bytes",
        "media_type": "image/png",
        "headers": {"ETag": '"e1"', "Cache-Control": "public", "X-Cache": "MISS"},
        "owner": "",
        "visibility": PUBLIC,
        "shared": True,
        **entry,
    }
    answer = Entry(**fields)
    hot.put(IMAGE, answer_key(query, accept), answer, hot.generation)
    return answer


def ask(
    settings: Settings,
    hot: HotCache[Entry],
    query: bytes = b"w=10",
    method: str = "GET",
    path: str = f"/images/{IMAGE}",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[bool, list[Message]]:
    """(whether the request went on to the routes, what was sent back before them)."""
    routed: list[Scope] = []

    async def routes(scope: Scope, receive: Receive, send: Send) -> None:
        routed.append(scope)

    route = Route("/images/{image_id}", routes)
    shared = SharedAnswers(routes, settings=settings, route=route, metrics=Metrics())
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
        "state": {"hot": hot},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(shared(scope, receive, send))
    return bool(routed), sent


def memory() -> HotCache[Entry]:
    hot = answer_cache(1024 * 1024)
    hot.connected = True  # as when the deletion watch is up
    return hot


def test_a_shared_answer_is_given_without_routing() -> None:
    hot, settings = memory(), Settings.from_env(Env({}))
    answer = held(hot, b"w=10", accept="image/webp")
    routed, sent = ask(settings, hot, headers=[(b"accept", b"image/webp")])
    assert not routed
    assert sent[0]["status"] == 200 and sent[1]["body"] == answer.body
    assert (b"x-cache", b"HIT") in sent[0]["headers"]
    # HEAD: the length, no body; a matching If-None-Match: 304.
    _, sent = ask(settings, hot, method="HEAD", headers=[(b"accept", b"image/webp")])
    assert (b"content-length", str(len(answer.body)).encode()) in sent[0]["headers"]
    assert sent[1]["body"] == b""
    revalidated = [(b"accept", b"image/webp"), (b"if-none-match", b'"e1"')]
    assert ask(settings, hot, headers=revalidated)[1][0]["status"] == 304


def test_everything_else_goes_on_to_the_routes() -> None:
    hot, settings = memory(), Settings.from_env(Env({}))
    held(hot, b"w=10")
    assert ask(settings, hot, headers=[(b"accept", b"image/webp")])[0]  # another Accept
    assert ask(settings, hot, query=b"w=11")[0]  # nothing held
    assert ask(settings, hot, method="DELETE")[0]
    assert ask(settings, hot, path=f"/images/{IMAGE}/info")[0]
    # A credential is the routes' to verify (or to refuse), even for a public answer.
    assert ask(settings, hot, headers=[(b"authorization", b"Bearer nonsense")])[0]
    assert ask(settings, hot, headers=[(b"x-api-key", b"nonsense")])[0]
    # Answers that are not shared: a private one, and one drawing another image.
    held(hot, b"w=12", visibility=PRIVATE, owner="alice", shared=False)
    held(hot, b"w=13&wm=BBBBBBBBBBBBBBBBBBBBBB", shared=False)
    assert ask(settings, hot, query=b"w=12")[0]
    assert ask(settings, hot, query=b"w=13&wm=BBBBBBBBBBBBBBBBBBBBBB")[0]


def test_signatures_are_checked_as_the_routes_check_them() -> None:
    hot = memory()
    env = {"IMAGESVC_URL_SIGNING_KEYS": f"{KEY}:{SECRET}", "IMAGESVC_SIGNATURES": "required"}
    settings = Settings.from_env(Env(env))
    signed = sign(f"/images/{IMAGE}", [("w", "10")], SigningKey(KEY, SECRET.encode()))
    held(hot, signed.encode())
    held(hot, b"w=10")
    assert not ask(settings, hot, query=signed.encode())[0]
    # Unsigned, in required mode: refused by the routes, which say why.
    assert ask(settings, hot, query=b"w=10")[0]
    forged = signed[:-1] + ("A" if signed[-1] != "A" else "B")  # a signature gone wrong
    held(hot, forged.encode())
    assert ask(settings, hot, query=forged.encode())[0]


def test_through_the_gateway(stack: Callable[..., ServiceProcess]) -> None:
    gateway = stack({"IMAGESVC_API_KEYS": f"alice:{ALICE}"})
    alice = {"Authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        png = png_bytes(40, 30, seed=97)
        public = http.post(
            "/images?visibility=public",
            content=png,
            headers={"Content-Type": "image/png", **alice},
        )
        path = f"/images/{public.json()['id']}?w=20"
        first, again = http.get(path), http.get(path)
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
        assert again.content == first.content
        # Held and public, yet a bad credential is refused, not ignored.
        is_problem(http.get(path, headers={"Authorization": "Bearer not-a-key"}), 401)
        assert http.get(path, headers=alice).content == first.content
        private = http.post(
            "/images",  # private to its owner, where there are keys
            content=png,
            headers={"Content-Type": "image/png", **alice},
        )
        mine = f"/images/{private.json()['id']}?w=20"
        assert http.get(mine, headers=alice).status_code == 200
        assert http.get(mine, headers=alice).headers["x-cache"] == "HIT"
        is_problem(http.get(mine), 404)  # held for alice, and no one else's
        text = http.get("/metrics").text
    hits = [
        line
        for line in text.splitlines()
        if line.startswith("imagesvc_http_requests_total{")
        and 'route="/images/{image_id}"' in line
        and 'status="200"' in line
        and 'method="GET"' in line
    ]
    assert hits and float(hits[0].rsplit(" ", 1)[1]) >= 5
