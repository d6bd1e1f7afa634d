"""The CacheService RPCs: originals in, originals out, metadata, and the variant cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2

from cache.blobs import BlobNotFound, BlobStore
from cache.config import Settings
from cache.metadata import (
    DeletionsMissed,
    ImageRecord,
    IntentLost,
    InvalidPageToken,
    MetadataStore,
)
from cache.metrics import CacheMetrics
from cache.placeholders import Placeholders, placeholders
from cache.storage import StorageFull, StorageUnavailable, is_full
from cache.variants import Variant, VariantCache, VariantRecord, valid_key
from common.caller import caller_from, can_read
from common.errors import Reason, ServiceError, invalid_argument
from common.ids import ImageId, new_image_id, parse_image_id
from common.imaging import ImageInfo, OverBudget, SourceLimits, inspect
from common.streams import payload_too_large, receive

log = logging.getLogger("cache")

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_FILENAME = 255
MAX_OWNER = 128
SHA256 = re.compile(r"[0-9a-f]{64}")  # as ImageMetadata.sha256 spells it
WATCH_BACKLOG = 10_000
FOLLOW_RETRY_SECONDS = 0.5  # while deletions cannot be followed, how often to try again
# Uploads of at most this many pixels (all frames) are validated on a lane of their own,
# so a small image never waits behind big validations. 16 Mpx (most photos) decode in a
# fraction of a second.
QUICK_LANE_PIXELS = 16_000_000
# An upload's intent, or a staged file, older than this is a crash's leftover: no upload
# spends that long between its intent and its record (the blob write alone), so
# recovery may remove what it left without listing every image.
STALE_SECONDS = 15 * 60
STAGED_SUFFIX = ".partial"


def _image_id(value: str, field_name: str = "id") -> ImageId:
    try:
        return parse_image_id(value)
    except ValueError:
        raise invalid_argument(field_name, "not a valid image id") from None


def _not_found(image_id: str) -> ServiceError:
    return ServiceError(Reason.IMAGE_NOT_FOUND, "no such image", {"id": image_id})


def _readable(image_id: str, record: ImageRecord | None, context: Context) -> ImageRecord:
    """record, if there is one and the call's caller (when it names one) may read it.

    One path and one answer for "missing" and "not yours", so neither the status nor
    the time taken tells them apart.
    """
    caller = caller_from(context.invocation_metadata())
    if record is None or (
        caller is not None and not can_read(record.owner, record.visibility, caller)
    ):
        raise _not_found(image_id)
    return record


def _check_owner(header: pb.PutImageHeader, context: Context) -> None:
    """A call made for a caller stores images as theirs alone (an admin's as anyone's):
    a gateway that got an owner wrong must not be able to plant images on another."""
    caller = caller_from(context.invocation_metadata())
    if caller is None or caller.admin:
        return
    if not caller.authenticated or header.owner != caller.owner:
        raise ServiceError(Reason.PERMISSION_DENIED, "a caller may store images as their own only")


def image_proto(record: ImageRecord) -> image_pb2.ImageMetadata:
    created = Timestamp(
        seconds=record.created_ns // 1_000_000_000, nanos=record.created_ns % 1_000_000_000
    )
    return image_pb2.ImageMetadata(
        id=record.id,
        original_filename=record.original_filename,
        media_type=record.media_type,
        format=record.format,
        width=record.width,
        height=record.height,
        frames=record.frames,
        byte_size=record.byte_size,
        sha256=record.sha256,
        created_time=created,
        owner=record.owner,
        visibility=image_pb2.Visibility.ValueType(record.visibility),
        blurhash=record.blurhash,
        thumbhash=record.thumbhash,
    )


def variant_proto(record: VariantRecord) -> image_pb2.VariantMetadata:
    return image_pb2.VariantMetadata(
        image_id=record.image_id,
        key=record.key,
        media_type=record.media_type,
        width=record.width,
        height=record.height,
        byte_size=record.byte_size,
        sha256=record.sha256,
    )


def _check_header(header: pb.PutImageHeader) -> int:
    if len(header.original_filename) > MAX_FILENAME:
        raise invalid_argument("original_filename", f"longer than {MAX_FILENAME} characters")
    if len(header.owner) > MAX_OWNER:
        raise invalid_argument("owner", f"longer than {MAX_OWNER} characters")
    if header.visibility not in image_pb2.Visibility.values():
        raise invalid_argument("visibility", "unknown visibility")
    if header.visibility == image_pb2.VISIBILITY_UNSPECIFIED:
        return image_pb2.VISIBILITY_PRIVATE  # safe by default
    return int(header.visibility)


def _inspect_file(
    path: Path, limits: SourceLimits, budget: int | None
) -> tuple[ImageInfo, Placeholders]:
    """The image's info and its placeholders, made from the first frame as validation
    decodes it (no second decode); placeholders that cannot be made are left empty."""
    made: list[Placeholders] = []
    with path.open("rb") as fp:
        info = inspect(
            fp, limits, budget, first_frame=lambda frame: made.append(placeholders(frame))
        )
    return info, made[0] if made else Placeholders(error="no frame was decoded")


def _checked_variant_header(header: pb.PutVariantHeader, at: str = "") -> pb.PutVariantHeader:
    """header, or an INVALID_ARGUMENT naming the field (after `at`, where it sits)."""
    _image_id(header.image_id, f"{at}image_id")
    if not valid_key(header.key):
        raise invalid_argument(f"{at}key", "a variant key is 1-128 characters of [A-Za-z0-9_-]")
    if not header.media_type.startswith("image/") or len(header.media_type) > 64:
        raise invalid_argument(f"{at}media_type", "must be an image/* media type")
    if header.width < 0 or header.height < 0:
        raise invalid_argument(f"{at}width", "dimensions cannot be negative")
    return header


class CacheService(pb_grpc.CacheServiceServicer):
    """Owns originals, their metadata and the variant cache."""

    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        metadata: MetadataStore,
        variants: VariantCache,
        metrics: CacheMetrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.blobs = blobs
        self.metadata = metadata
        self.variants = variants
        self.limits = SourceLimits(
            settings.allowed_formats,
            settings.max_pixels,
            settings.max_frames,
            settings.max_total_pixels,
        )
        # Full decodes are CPU- and memory-heavy: at most this many at once, in threads
        # (Pillow releases the GIL while decoding). Every upload starts on the quick
        # lane, which gives up past QUICK_LANE_PIXELS (from the header when it tells),
        # so big validations can take every worker of the main lane and no more.
        self._quick_decoders = ThreadPoolExecutor(
            max_workers=settings.validation_workers, thread_name_prefix="inspect-quick"
        )
        self._decoders = ThreadPoolExecutor(
            max_workers=settings.validation_workers, thread_name_prefix="inspect"
        )
        # One queue per WatchDeletions stream.
        self._watchers: set[asyncio.Queue[str | None]] = set()
        self._following = False  # deletions are followed now, so watchers may join
        self._deleting: set[str] = set()  # ids this replica's DeleteImage calls are deleting

    def close(self) -> None:
        self._quick_decoders.shutdown(wait=True, cancel_futures=True)
        self._decoders.shutdown(wait=True, cancel_futures=True)

    async def PutImage(
        self, request_iterator: AsyncIterator[pb.PutImageRequest], context: Context
    ) -> pb.PutImageResponse:
        header: pb.PutImageHeader | None = None
        temp: Path | None = None
        out: IO[bytes] | None = None
        size = 0
        digest = hashlib.sha256()
        limit = self.settings.max_upload_bytes
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("payload")
                if header is None:
                    if kind != "header":
                        raise invalid_argument("header", "the first message must be the header")
                    header = message.header
                    _check_header(header)
                    _check_owner(header, context)
                    temp = self.blobs.staging / f"{uuid.uuid4().hex}{STAGED_SUFFIX}"
                    out = temp.open("wb")
                    continue
                if kind != "chunk":
                    raise invalid_argument("header", "only the first message may be a header")
                size += len(message.chunk)
                if size > limit:
                    raise payload_too_large(limit, "upload")
                digest.update(message.chunk)
                assert out is not None
                out.write(message.chunk)
            if header is None or temp is None or out is None:
                raise invalid_argument("header", "the stream carried no header")
            if size == 0:
                raise ServiceError(Reason.INVALID_ARGUMENT, "empty upload: no image bytes came")
            out.close()
            info, placeholder = await self._validate(temp)
            record = ImageRecord(
                id=new_image_id(),
                original_filename=header.original_filename,
                media_type=info.media_type,
                format=info.format,
                width=info.width,
                height=info.height,
                frames=info.frames,
                byte_size=size,
                sha256=digest.hexdigest(),
                created_ns=time.time_ns(),
                owner=header.owner,
                visibility=_check_header(header),
                blurhash=placeholder.blurhash,
                thumbhash=placeholder.thumbhash,
            )
            if placeholder.error:
                # Never a reason to refuse an image that decodes: it goes without.
                log.warning(
                    "no placeholders",
                    extra={"id": record.id, "format": info.format, "err": placeholder.error},
                )
            # Shielded: once the bytes are committing, a client hanging up must not
            # leave a blob without metadata or metadata without a blob.
            await asyncio.shield(self._store(temp, record, info))
            return pb.PutImageResponse(image=image_proto(record))
        except OSError as exc:
            if is_full(exc):  # staging the bytes found no room
                raise StorageFull("staging", str(exc)) from exc
            raise
        finally:
            if out is not None:
                # Closing flushes what is buffered, which fails again on a full disk;
                # the file is closed all the same, and removed below.
                with contextlib.suppress(OSError):
                    out.close()
            if temp is not None:
                temp.unlink(missing_ok=True)

    async def _validate(self, path: Path) -> tuple[ImageInfo, Placeholders]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._quick_decoders, _inspect_file, path, self.limits, QUICK_LANE_PIXELS
            )
        except OverBudget:
            # Decoded again from the start: at most QUICK_LANE_PIXELS were spent.
            return await loop.run_in_executor(
                self._decoders, _inspect_file, path, self.limits, None
            )

    async def _store(self, staged: Path, record: ImageRecord, info: ImageInfo) -> None:
        """The intent, the blob, then the record: a crash anywhere leaves an intent that
        recovery finishes (see `recover`), never a record without its blob."""
        await self.metadata.intend(record.id, time.time_ns())
        try:
            await self.blobs.put(record.id, staged)
            await self.metadata.insert(record)
        except StorageFull:
            # No room for the blob or for its record: nothing of the upload may stay.
            # Should even the intent's removal find no room, recovery removes the rest.
            with contextlib.suppress(StorageFull, StorageUnavailable):
                await self._forget(record.id)
            raise
        except IntentLost:
            # Swept as stale while the blob was written: recovery may have run before
            # the blob was there, so it is ours to remove.
            await self.blobs.delete(record.id)
            raise ServiceError(Reason.UPSTREAM_UNAVAILABLE, "the upload took too long") from None
        log.info(
            "stored image",
            extra={"id": record.id, "format": info.format, "bytes": record.byte_size},
        )

    async def GetImage(
        self, request: pb.GetImageRequest, context: Context
    ) -> AsyncIterator[pb.GetImageResponse]:
        image_id = _image_id(request.id)
        record = _readable(image_id, await self.metadata.get(image_id), context)
        try:
            blob = await self.blobs.open(image_id)
        except BlobNotFound:
            raise _not_found(image_id) from None
        try:
            yield pb.GetImageResponse(image=image_proto(record))
            async for chunk in blob.chunks(self.settings.chunk_bytes):
                yield pb.GetImageResponse(chunk=chunk)
        except BlobNotFound:
            raise _not_found(image_id) from None  # deleted while it was read
        finally:
            await blob.close()

    async def StatImage(
        self, request: pb.StatImageRequest, context: Context
    ) -> pb.StatImageResponse:
        image_id = _image_id(request.id)
        record = _readable(image_id, await self.metadata.get(image_id), context)
        return pb.StatImageResponse(image=image_proto(record))

    async def ListImages(
        self, request: pb.ListImagesRequest, context: Context
    ) -> pb.ListImagesResponse:
        if len(request.owner) > MAX_OWNER:
            raise invalid_argument("owner", f"longer than {MAX_OWNER} characters")
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise invalid_argument("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")
        if request.sha256 and not SHA256.fullmatch(request.sha256):
            raise invalid_argument("sha256", "must be 64 lower-case hex digits")
        try:
            page = await self.metadata.list(
                request.owner, page_size, request.page_token, request.sha256
            )
        except InvalidPageToken:
            raise invalid_argument("page_token", "not a page token this service issued") from None
        # A caller lists only what they may read (an anonymous one sees no private image
        # without an owner); a page may then come out short, its token still right.
        caller = caller_from(context.invocation_metadata())
        records = [
            r for r in page.records if caller is None or can_read(r.owner, r.visibility, caller)
        ]
        return pb.ListImagesResponse(
            images=[image_proto(r) for r in records], next_page_token=page.next_token
        )

    async def DeleteImage(
        self, request: pb.DeleteImageRequest, context: Context
    ) -> pb.DeleteImageResponse:
        image_id = _image_id(request.id)
        caller = caller_from(context.invocation_metadata())
        if caller is not None and not caller.admin:
            # Owners never change, so what is checked here still holds at the delete.
            record = _readable(image_id, await self.metadata.get(image_id), context)
            if not caller.authenticated or record.owner != caller.owner:
                raise ServiceError(
                    Reason.PERMISSION_DENIED, "only the owner may delete it", {"id": image_id}
                )
        # Metadata first: from this moment the image is not listed nor served, and every
        # replica hears of it (see follow_deletions). The rest is shielded: a caller
        # hanging up must not leave variants behind.
        self._deleting.add(image_id)
        try:
            if not await self.metadata.delete(image_id, time.time_ns()):
                raise _not_found(image_id)
            # This replica's watchers hear at once, before the caller has its answer;
            # the others' through the store (and these again, which is harmless).
            self._announce(image_id)
            try:
                purged = await asyncio.shield(self._forget(image_id))
            except StorageUnavailable as exc:
                # The image is gone for every client already; its intent stays, and
                # recovery removes the rest once the engine answers.
                log.warning(
                    "deleted image, cleanup deferred",
                    extra={"id": image_id, "upstream": exc.engine, "err": exc.detail},
                )
                return pb.DeleteImageResponse()
        finally:
            self._deleting.discard(image_id)
        log.info("deleted image", extra={"id": image_id, "purged_variants": purged})
        return pb.DeleteImageResponse(purged_variants=purged)

    async def _forget(self, image_id: str) -> int:
        """Everything of a deleted (or never committed) image but its record: blob,
        variants, then the intent that said they might remain."""
        # Variants first: they are served where the original is not (hot caches).
        purged = await self.variants.purge(image_id)
        await self.blobs.delete(image_id)
        await self.metadata.finish(image_id)
        return purged

    async def recover(self) -> int:
        """Finish what a crash (of any replica) cut short: uploads whose record never
        came and deletes whose cleanup did not end; return how many."""
        stale = time.time_ns() - STALE_SECONDS * 1_000_000_000
        unfinished = await self.metadata.unfinished(stale)
        finished = 0
        for image_id in unfinished:
            # Each on its own: one that cannot be finished now waits for the next round.
            try:
                await self._forget(image_id)
            except StorageUnavailable as exc:
                log.warning("recovery postponed", extra={"id": image_id, "upstream": exc.engine})
            else:
                finished += 1
        cutoff = time.time() - STALE_SECONDS
        for staged in self.blobs.staging.glob(f"*{STAGED_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if staged.stat().st_mtime < cutoff:
                    staged.unlink()
        return finished

    async def follow_deletions(self) -> None:
        """Pass every deletion, through any replica, on to this replica's watchers (and
        its own variants, when they are not shared); runs as long as the service."""
        while True:
            try:
                deleted = self.metadata.deletions()
                # No await between these: a store that cannot follow deletions now ends
                # the iteration at once, before any watcher can join.
                self._following = True
                async for image_id in deleted:
                    # Variants of this replica's own deletes are purged (and counted)
                    # by DeleteImage.
                    if not self.variants.shared and image_id not in self._deleting:
                        await self.variants.purge(image_id)
                    self._announce(image_id)
            except (DeletionsMissed, StorageUnavailable) as exc:
                if self._following:
                    log.warning("deletions missed; watchers start again", extra={"err": str(exc)})
            finally:
                # Watchers cannot know what they missed: they forget all and watch again.
                self._following = False
                for watcher in list(self._watchers):
                    self._cut_off(watcher)
            await asyncio.sleep(FOLLOW_RETRY_SECONDS)

    def _announce(self, image_id: str) -> None:
        """Hand image_id to every watcher; one too far behind is cut off."""
        for watcher in list(self._watchers):
            if watcher.qsize() >= WATCH_BACKLOG:
                self._cut_off(watcher)
            else:
                watcher.put_nowait(image_id)

    def _cut_off(self, watcher: asyncio.Queue[str | None]) -> None:
        """End a watcher's stream once it has read what it was sent (it forgets all and
        watches again): None is the end."""
        self._watchers.discard(watcher)
        watcher.put_nowait(None)

    async def _lookup(self, request: pb.GetVariantRequest) -> Variant | None:
        """The variant asked for; None for a miss, which also says the image exists."""
        image_id = _image_id(request.image_id, "image_id")
        if not valid_key(request.key):
            raise invalid_argument("key", "a variant key is 1-128 characters of [A-Za-z0-9_-]")
        # The image is looked up on a hit too: a delete whose variant purge failed (the
        # engine down) leaves variants until recovery, and they must not be served.
        if await self.metadata.get(image_id) is None:
            raise _not_found(image_id)
        # A miss is an expected answer, not an error (errors cost far more to build and
        # to read). It also says the image exists, so a processor may reuse an original
        # it holds.
        variant = await self.variants.get(image_id, request.key)
        (self.metrics.variant_misses if variant is None else self.metrics.variant_hits).inc()
        return variant

    async def GetVariant(
        self, request: pb.GetVariantRequest, context: Context
    ) -> AsyncIterator[pb.GetVariantResponse]:
        variant = await self._lookup(request)
        if variant is None:
            claimed = request.claim and await self.variants.claim(
                request.image_id, request.key, self.settings.render_lease_seconds
            )
            yield pb.GetVariantResponse(miss=pb.VariantMiss(claimed=claimed))
            return
        yield pb.GetVariantResponse(variant=variant_proto(variant.record))
        view = memoryview(variant.data)
        step = self.settings.chunk_bytes
        for start in range(0, len(view), step):
            yield pb.GetVariantResponse(chunk=bytes(view[start : start + step]))

    async def PutVariant(
        self, request_iterator: AsyncIterator[pb.PutVariantRequest], context: Context
    ) -> pb.PutVariantResponse:
        header, payload = await receive(
            request_iterator,
            "header",
            self.settings.max_variant_bytes,
            "variant",
            _checked_variant_header,
        )
        return pb.PutVariantResponse(variant=await self._put_variant(header, payload))

    async def _put_variant(
        self, header: pb.PutVariantHeader, payload: bytes
    ) -> image_pb2.VariantMetadata:
        image_id = ImageId(header.image_id)
        record = VariantRecord(
            image_id=image_id,
            key=header.key,
            media_type=header.media_type,
            width=header.width,
            height=header.height,
            byte_size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
        )
        await self.variants.put(Variant(record, payload))
        # Checked after storing, not before: an unknown image, or a delete that ran
        # while we stored, must win, so whatever was added goes again.
        if await self.metadata.get(image_id) is None:
            await self.variants.purge(image_id)
            raise _not_found(image_id)
        return variant_proto(record)

    async def WatchDeletions(
        self, request: pb.WatchDeletionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchDeletionsResponse]:
        if not self._following:
            raise ServiceError(Reason.UPSTREAM_UNAVAILABLE, "deletions cannot be followed now")
        # Bounded by _announce, which cuts a watcher off at WATCH_BACKLOG ids behind, so
        # that the end (None) always finds room.
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._watchers.add(queue)
        await context.send_initial_metadata(())  # the watcher knows it is connected
        try:
            while (image_id := await queue.get()) is not None:
                yield pb.WatchDeletionsResponse(image_id=image_id)
            raise ServiceError(
                Reason.UPSTREAM_UNAVAILABLE, "deletions may have been missed: watch again"
            )
        finally:
            self._watchers.discard(queue)
