"""Client and AsyncClient: every HTTP route of the gateway, typed, over httpx.

Both run the same operations. An operation (the `_Operations` methods) is a generator
that yields the httpx.Request to send, is sent the response, and returns the result (or
yields results, for iterators): it holds every piece of logic (URLs, headers, bodies,
parsing, errors, pagination), and each client only sends, one with httpx.Client and the
other with httpx.AsyncClient.
"""

from __future__ import annotations

import builtins
import io
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, TypeVar, cast
from urllib.parse import quote

import httpx

from imagesvc.errors import ServiceUnreachable, problem_of
from imagesvc.signing import Signer
from imagesvc.urls import Params, URLBuilder, query

T = TypeVar("T")
Visibility = Literal["public", "private"]
# What may be uploaded: a file's path, its bytes, or a binary file open for reading.
Source = str | os.PathLike[str] | bytes | IO[bytes]
# Called as bytes go out: (bytes sent so far, bytes in all, None when unknown).
Progress = Callable[[int, int | None], None]
CHUNK = 256 * 1024
DEFAULT_TIMEOUT = 60.0
USER_AGENT = "imagesvc-client/0.1"


@dataclass(frozen=True)
class Image:
    """An image's metadata, as the gateway gives it (upload, info, lists)."""

    id: str
    url: str
    filename: str
    media_type: str
    format: str
    width: int
    height: int
    frames: int
    byte_size: int  # "bytes" in the JSON
    sha256: str
    created: str  # RFC 3339, UTC
    owner: str
    visibility: str
    blurhash: str | None
    thumbhash: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Image:
        fields: dict[str, Any] = {name: body.get(name) for name in cls.__dataclass_fields__}
        fields["byte_size"] = body["bytes"]
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the gateway gave."""
        body = {name: getattr(self, name) for name in self.__dataclass_fields__}
        body["bytes"] = body.pop("byte_size")
        return body


@dataclass(frozen=True)
class Page:
    """One page of a listing: its images, and the cursor of the next (None on the last)."""

    images: list[Image]
    next_cursor: str | None


@dataclass(frozen=True)
class Variant:
    """An original or a variant: its bytes (none for HEAD) and what the headers say."""

    content: bytes
    media_type: str
    size: int
    etag: str
    cache: str | None  # X-Cache: HIT or MISS, for variants
    headers: httpx.Headers


@dataclass(frozen=True)
class SignedURL:
    url: str  # absolute, on the client's base URL
    expires: int  # UNIX seconds


Request = httpx.Request
Response = httpx.Response
# An operation: yields requests (and, for iterators, results), is sent the responses.
Operation = Generator[Request, Response, T]
Listing = Generator[Request | Image, Response | None, None]


class _ProgressReader(io.RawIOBase):
    """A binary file read in chunks, telling progress each time (seeking to the start,
    as httpx's multipart does before reading, starts the count again)."""

    def __init__(self, file: IO[bytes], total: int | None, progress: Progress | None) -> None:
        self._file = file
        self.total = total
        self._progress = progress
        self._sent = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._sent += len(data)
        if self._progress is not None and data:
            self._progress(self._sent, self.total)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if position == 0:
            self._sent = 0
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


class _RawBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A raw upload's body, streamed in chunks to either kind of client."""

    def __init__(self, reader: _ProgressReader) -> None:
        self._reader = reader

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._reader.read(CHUNK):
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Local files: reads of a chunk take microseconds, no thread is worth it.
        while chunk := self._reader.read(CHUNK):
            yield chunk


def _length(file: IO[bytes]) -> int | None:
    """What is left to read of file, when it can be told without reading it."""
    try:
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return None


def _image(response: Response) -> Image:
    return Image.from_json(response.json())


def _variant(response: Response) -> Variant:
    headers = response.headers
    return Variant(
        content=response.content,
        media_type=headers.get("content-type", ""),
        size=int(headers.get("content-length", len(response.content))),
        etag=headers.get("etag", ""),
        cache=headers.get("x-cache"),
        headers=headers,
    )


class _Operations:
    """Every request the gateway takes, built, and every answer, read (no I/O here)."""

    def __init__(self, base_url: str, token: str | None, signer: Signer | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.urls = URLBuilder(self.base_url)
        self.signer = signer
        self.headers = {"User-Agent": USER_AGENT}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Request:
        return httpx.Request(
            method,
            self.base_url + path,
            params=tuple(params or ()),
            headers={**self.headers, **(headers or {})},
            **kwargs,
        )

    @staticmethod
    def checked(response: Response, *ok: int) -> Response:
        """response, when its status is one of ok (any 2xx if none); else its problem."""
        good = response.status_code in ok if ok else response.is_success
        if not good:
            raise problem_of(response)
        return response

    def upload(
        self,
        source: Source,
        *,
        filename: str | None,
        visibility: Visibility | None,
        media_type: str | None,
        multipart: bool,
        progress: Progress | None,
    ) -> Operation[Image]:
        opened: IO[bytes] | None = None
        if isinstance(source, bytes):
            file: IO[bytes] = io.BytesIO(source)
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            file = opened = path.open("rb")
            filename = path.name if filename is None else filename
        else:
            file = source
            if filename is None:
                name = getattr(source, "name", None)
                filename = Path(name).name if isinstance(name, str) else None
        try:
            reader = _ProgressReader(file, _length(file), progress)
            params: list[tuple[str, str]] = []
            if visibility is not None:
                params.append(("visibility", visibility))
            kind = media_type or "application/octet-stream"
            if multipart:
                files = {"file": (filename or "upload", reader, kind)}
                request = self.request("POST", "/images", params=params, files=files)
            else:
                if filename:
                    params.append(("filename", filename))
                request = self.request(
                    "POST", "/images", params=params, headers={"Content-Type": kind}
                )
                # Streamed from the file (httpx would read an iterator given as content
                # by one kind of client only); the length when it is known.
                request.stream = _RawBody(reader)
                request.headers.pop("Content-Length", None)
                if reader.total is not None:
                    request.headers["Content-Length"] = str(reader.total)
                else:
                    request.headers["Transfer-Encoding"] = "chunked"
            return _image(self.checked((yield request), 201))
        finally:
            if opened is not None:
                opened.close()

    def path(self, image_id: str, suffix: str = "") -> str:
        return f"/images/{quote(image_id, safe='')}{suffix}"

    def get(
        self, image_id: str, params: Params, accept: str | None, head: bool = False
    ) -> Operation[Variant]:
        headers = {"Accept": accept} if accept else {}
        method = "HEAD" if head else "GET"
        wanted = query(params)
        response = yield self.request(method, self.path(image_id), params=wanted, headers=headers)
        return _variant(self.checked(response, 200))

    def blurred(self, image_id: str) -> Operation[Variant]:
        path = f"/blurred-images/{quote(image_id, safe='')}"
        return _variant(self.checked((yield self.request("GET", path)), 200))

    def info(self, image_id: str) -> Operation[Image]:
        response = yield self.request("GET", self.path(image_id, "/info"))
        return _image(self.checked(response, 200))

    def page(self, limit: int, cursor: str | None, sha256: str | None) -> Operation[Page]:
        params = [("limit", str(limit))]
        if cursor:
            params.append(("cursor", cursor))
        if sha256 is not None:
            params.append(("sha256", sha256))
        body = self.checked((yield self.request("GET", "/images", params=params)), 200).json()
        return Page([Image.from_json(i) for i in body["images"]], body.get("next_cursor"))

    def images(self, page_size: int, sha256: str | None) -> Listing:
        """Every image of the listing, page after page."""
        cursor: str | None = None
        while True:
            got = yield from self.page(page_size, cursor, sha256)
            yield from got.images
            cursor = got.next_cursor
            if not cursor:
                return

    def delete(self, image_id: str) -> Operation[None]:
        self.checked((yield self.request("DELETE", self.path(image_id))), 204)

    def presets(self) -> Operation[dict[str, dict[str, Any]]]:
        body = self.checked((yield self.request("GET", "/presets")), 200).json()
        return cast(dict[str, dict[str, Any]], body)

    def signed_url(
        self, image_id: str, params: Params, expires_in: int | None
    ) -> Operation[SignedURL]:
        wanted: dict[str, Any] = {}
        for name, value in query(params):
            wanted[name] = True if value == "" else value
        body: dict[str, Any] = {"params": wanted}
        if expires_in is not None:
            body["expires_in"] = expires_in
        path = self.path(image_id, "/signed-urls")
        answer = self.checked((yield self.request("POST", path, json=body)), 200).json()
        return SignedURL(self.base_url + answer["url"], int(answer["expires"]))

    def json(self, path: str, *ok: int) -> Operation[dict[str, Any]]:
        return cast(dict[str, Any], self.checked((yield self.request("GET", path)), *ok).json())

    def text(self, path: str) -> Operation[str]:
        return self.checked((yield self.request("GET", path)), 200).text

    def url(self, image_id: str, params: Params) -> str:
        return self.urls.image(image_id, params)

    def sign(
        self, image_id: str, params: Params, expires_in: float | None, expires: int | None
    ) -> str:
        if self.signer is None:
            raise ValueError("no signing key: give the client signer=Signer(kid, secret)")
        return self.signer.sign(self.url(image_id, params), expires_in=expires_in, expires=expires)


class _Common:
    """What both clients have that needs no request: URLs, local signing."""

    _ops: _Operations

    @property
    def base_url(self) -> str:
        return self._ops.base_url

    def url(self, image_id: str, params: Params | None = None, /, **more: Any) -> str:
        """The absolute URL of the original (no parameters) or of a variant; parameters
        are checked (InvalidParameter) but nothing is asked of the gateway."""
        return self._ops.url(image_id, {**(params or {}), **more})

    def sign_url(
        self,
        image_id: str,
        params: Params | None = None,
        /,
        *,
        expires_in: float | None = 3600,
        expires: int | None = None,
        **more: Any,
    ) -> str:
        """The URL, signed here with the client's Signer (no request): it reads the image,
        even a private one, until it expires (expires_in=None and no expires: never)."""
        return self._ops.sign(image_id, {**(params or {}), **more}, expires_in, expires)


class Client(_Common):
    """The gateway's HTTP API, blocking: `with Client(url, token=...) as client: ...`.

    Thread-safe as httpx.Client is. Errors: ProblemError subclasses (NotFound,
    BadRequest...) carrying the problem body, ServiceUnreachable when nothing answered.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        signer: Signer | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self._ops = _Operations(base_url, token, signer)
        self._http = http or httpx.Client(timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: Request) -> Response:
        try:
            return self._http.send(request)
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc

    def _run(self, operation: Operation[T]) -> T:
        try:
            request = next(operation)
            while True:
                try:
                    request = operation.send(self._send(request))
                except StopIteration as done:
                    return cast(T, done.value)
        finally:
            operation.close()  # a file it opened is closed, even when sending failed

    def upload(
        self,
        source: Source,
        *,
        filename: str | None = None,
        visibility: Visibility | None = None,
        media_type: str | None = None,
        multipart: bool = False,
        progress: Progress | None = None,
    ) -> Image:
        """Store an image (a path, bytes or a binary file): its metadata. A raw body by
        default, multipart (field `file`) with multipart=True; progress is called with
        (bytes sent, total) as the body goes out."""
        return self._run(
            self._ops.upload(
                source,
                filename=filename,
                visibility=visibility,
                media_type=media_type,
                multipart=multipart,
                progress=progress,
            )
        )

    def get(
        self,
        image_id: str,
        params: Params | None = None,
        /,
        *,
        accept: str | None = None,
        **more: Any,
    ) -> Variant:
        """The original, byte for byte, or with parameters a variant:
        `client.get(id, w=300, format="webp")`."""
        return self._run(self._ops.get(image_id, {**(params or {}), **more}, accept))

    def head(
        self, image_id: str, params: Params | None = None, /, *, accept: str | None = None
    ) -> Variant:
        """What get would answer, without the bytes (content is empty; size says it)."""
        return self._run(self._ops.get(image_id, params or {}, accept, head=True))

    def blurred(self, image_id: str) -> Variant:
        """GET /blurred-images/{id}, the original service's blur."""
        return self._run(self._ops.blurred(image_id))

    def info(self, image_id: str) -> Image:
        return self._run(self._ops.info(image_id))

    def list(
        self, *, limit: int = 20, cursor: str | None = None, sha256: str | None = None
    ) -> Page:
        """One page of the caller's images, newest first."""
        return self._run(self._ops.page(limit, cursor, sha256))

    def iter_images(self, *, page_size: int = 100, sha256: str | None = None) -> Iterator[Image]:
        """Every image of the caller's, newest first, fetched a page at a time."""
        listing = self._ops.images(page_size, sha256)
        item = next(listing)
        while True:
            if isinstance(item, Image):
                yield item
                sent = None
            else:
                sent = self._send(item)
            try:
                item = listing.send(sent)
            except StopIteration:
                return

    def find(self, sha256: str) -> builtins.list[Image]:
        """The caller's images whose original has this SHA-256 (a lookup by content)."""
        return list(self.iter_images(sha256=sha256))

    def delete(self, image_id: str) -> None:
        self._run(self._ops.delete(image_id))

    def presets(self) -> dict[str, dict[str, Any]]:
        return self._run(self._ops.presets())

    def signed_url(
        self,
        image_id: str,
        params: Params | None = None,
        /,
        *,
        expires_in: int | None = None,
        **more: Any,
    ) -> SignedURL:
        """A signed URL made by the gateway with its first key (POST .../signed-urls)."""
        return self._run(self._ops.signed_url(image_id, {**(params or {}), **more}, expires_in))

    def health(self) -> dict[str, Any]:
        """GET /healthz (liveness)."""
        return self._run(self._ops.json("/healthz", 200))

    def ready(self) -> dict[str, Any]:
        """GET /readyz: the services' health, also when not ready (503)."""
        return self._run(self._ops.json("/readyz", 200, 503))

    def metrics(self) -> str:
        return self._run(self._ops.text("/metrics"))

    def openapi(self) -> dict[str, Any]:
        return self._run(self._ops.json("/openapi.json", 200))


class AsyncClient(_Common):
    """The same API as Client, for asyncio: `async with AsyncClient(url) as client:`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        signer: Signer | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._ops = _Operations(base_url, token, signer)
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: Request) -> Response:
        try:
            return await self._http.send(request)
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc

    async def _run(self, operation: Operation[T]) -> T:
        try:
            request = next(operation)
            while True:
                try:
                    request = operation.send(await self._send(request))
                except StopIteration as done:
                    return cast(T, done.value)
        finally:
            operation.close()  # a file it opened is closed, even when sending failed

    async def upload(
        self,
        source: Source,
        *,
        filename: str | None = None,
        visibility: Visibility | None = None,
        media_type: str | None = None,
        multipart: bool = False,
        progress: Progress | None = None,
    ) -> Image:
        return await self._run(
            self._ops.upload(
                source,
                filename=filename,
                visibility=visibility,
                media_type=media_type,
                multipart=multipart,
                progress=progress,
            )
        )

    async def get(
        self,
        image_id: str,
        params: Params | None = None,
        /,
        *,
        accept: str | None = None,
        **more: Any,
    ) -> Variant:
        return await self._run(self._ops.get(image_id, {**(params or {}), **more}, accept))

    async def head(
        self, image_id: str, params: Params | None = None, /, *, accept: str | None = None
    ) -> Variant:
        return await self._run(self._ops.get(image_id, params or {}, accept, head=True))

    async def blurred(self, image_id: str) -> Variant:
        return await self._run(self._ops.blurred(image_id))

    async def info(self, image_id: str) -> Image:
        return await self._run(self._ops.info(image_id))

    async def list(
        self, *, limit: int = 20, cursor: str | None = None, sha256: str | None = None
    ) -> Page:
        return await self._run(self._ops.page(limit, cursor, sha256))

    async def iter_images(
        self, *, page_size: int = 100, sha256: str | None = None
    ) -> AsyncIterator[Image]:
        listing = self._ops.images(page_size, sha256)
        item = next(listing)
        while True:
            if isinstance(item, Image):
                yield item
                sent = None
            else:
                sent = await self._send(item)
            try:
                item = listing.send(sent)
            except StopIteration:
                return

    async def find(self, sha256: str) -> builtins.list[Image]:
        return [image async for image in self.iter_images(sha256=sha256)]

    async def delete(self, image_id: str) -> None:
        await self._run(self._ops.delete(image_id))

    async def presets(self) -> dict[str, dict[str, Any]]:
        return await self._run(self._ops.presets())

    async def signed_url(
        self,
        image_id: str,
        params: Params | None = None,
        /,
        *,
        expires_in: int | None = None,
        **more: Any,
    ) -> SignedURL:
        return await self._run(
            self._ops.signed_url(image_id, {**(params or {}), **more}, expires_in)
        )

    async def health(self) -> dict[str, Any]:
        return await self._run(self._ops.json("/healthz", 200))

    async def ready(self) -> dict[str, Any]:
        return await self._run(self._ops.json("/readyz", 200, 503))

    async def metrics(self) -> str:
        return await self._run(self._ops.text("/metrics"))

    async def openapi(self) -> dict[str, Any]:
        return await self._run(self._ops.json("/openapi.json", 200))
