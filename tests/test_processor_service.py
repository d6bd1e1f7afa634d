"""Processor behaviour: one key per transformation, single-flight, limits, failures upstream."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image

from common.errors import Reason, remote_error
from processor import spec
from tests.support import (
    ServiceProcess,
    bytes_requests,
    channel,
    collect,
    failure,
    get_variant,
    metric,
    open_image,
    png_bytes,
    process_request,
    upload,
    wait_for,
)

Op = ppb.Operation


def big_jpeg(seed: int = 0) -> bytes:
    """A 4000x3000 photo-like JPEG: slow enough to decode that overlaps are certain."""
    base = Image.effect_noise((400, 300), 50 + seed).convert("RGB")
    out = io.BytesIO()
    base.resize((4000, 3000), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def big_id(cache_channel: grpc.Channel) -> str:
    return upload(pb_grpc.CacheServiceStub(cache_channel), big_jpeg()).id


def processed_keys(server: ServiceProcess) -> list[str]:
    return [str(e["key"]) for e in server.log_entries() if e.get("msg") == "processed"]


def cache_calls(cache_server: ServiceProcess, method: str) -> list[dict[str, object]]:
    return [e for e in cache_server.log_entries() if str(e.get("method")).endswith("/" + method)]


def variant_reads(cache_server: ServiceProcess) -> list[dict[str, object]]:
    return cache_calls(cache_server, "GetVariant")


def gone(pstub: ppb_grpc.ProcessorServiceStub, request: ppb.ProcessRequest) -> bool:
    """Whether the processor answers request IMAGE_NOT_FOUND (rather than the variant)."""
    try:
        collect(pstub.Process(request))
    except grpc.RpcError as exc:
        assert remote_error(exc).reason == Reason.IMAGE_NOT_FOUND
        return True
    return False


def renders(server: ServiceProcess) -> float:
    """How many renders the processor has made, of any format."""
    return metric(server, "imagesvc_processor_render_seconds_count")


def variant_lookups(cache_server: ServiceProcess) -> float:
    """How many GetVariant calls the cache service has answered, however they ended."""
    return metric(
        cache_server,
        "imagesvc_grpc_server_handled_total",
        service="imageservice.v1.CacheService",
        method="GetVariant",
    )


def test_permuted_spellings_share_one_variant(
    pstub: ppb_grpc.ProcessorServiceStub, processor_server: ServiceProcess, big_id: str
) -> None:
    first = process_request(
        big_id,
        Op(resize=ppb.Resize(width=120, height=90, fit=ppb.FIT_CONTAIN)),
        Op(blur=ppb.Blur(sigma=1.5)),
        Op(adjust=ppb.Adjust(brightness=1.0)),  # a no-op
        format=ppb.OUTPUT_FORMAT_AUTO,
        accept=["text/html", "*/*"],
    )
    second = process_request(
        big_id,
        Op(blur=ppb.Blur(sigma=1.5)),
        Op(rotate=ppb.Rotate(angle=360)),  # a no-op
        Op(resize=ppb.Resize(width=120, height=90, fit=ppb.FIT_INSIDE, dpr=1)),
    )
    meta1, data1 = collect(pstub.Process(first))
    meta2, data2 = collect(pstub.Process(second))
    assert meta1.key == meta2.key and data1 == data2
    assert processed_keys(processor_server).count(meta1.key) == 1
    third = process_request(big_id, Op(resize=ppb.Resize(width=121, height=90)))
    assert collect(pstub.Process(third))[0].key != meta1.key


def test_variant_keys_stay_the_same_across_releases() -> None:
    # Every cached variant is found by its key: a change to how keys are made, without
    # a pipeline version bump, would orphan the whole variant cache.
    request = process_request(
        "AAAAAAAAAAAAAAAAAAAAAA",
        Op(crop=ppb.Crop(left=1, top=2, width=300, height=200)),
        Op(resize=ppb.Resize(width=120, height=90, fit=ppb.FIT_COVER, gravity=ppb.GRAVITY_SMART)),
        Op(rotate=ppb.Rotate(angle=33.5)),
        Op(flip=ppb.Flip()),
        Op(flop=ppb.Flop()),
        Op(adjust=ppb.Adjust(brightness=1.2, contrast=0.8, saturation=0.5)),
        Op(grayscale=ppb.Grayscale()),
        Op(blur=ppb.Blur(sigma=1.5)),
        Op(sharpen=ppb.Sharpen(sigma=0.7)),
        Op(pixelate=ppb.Pixelate(size=4)),
        format=ppb.OUTPUT_FORMAT_WEBP,
        quality=70,
    )
    wanted = spec.parse(
        request.transformation.operations,
        request.transformation.output,
        spec.RequestLimits(8192, 100),
    )
    assert spec.PIPELINE_VERSION == "5"  # bumped on purpose: update the key below too
    key = "8288e54dd2edfb8f8fca58103a0ab6df00dfee02e3f1b4ef20a29fa6e86b9131"
    assert wanted.key("AAAAAAAAAAAAAAAAAAAAAA") == key


def test_a_hit_does_no_processing(
    pstub: ppb_grpc.ProcessorServiceStub,
    stub: pb_grpc.CacheServiceStub,
    processor_server: ServiceProcess,
    big_id: str,
) -> None:
    request = process_request(big_id, Op(resize=ppb.Resize(width=77)))
    meta, data = collect(pstub.Process(request))
    stored(stub, big_id, meta.key)  # just after the first answer
    before = renders(processor_server)
    for _ in range(5):
        assert collect(pstub.Process(request)) == (meta, data)
    assert renders(processor_server) == before


@pytest.mark.parametrize("bound", ["deadline", "render_timeout"])
def test_a_render_lease_whose_holder_died_costs_half_the_callers_time_not_the_call(
    stub: pb_grpc.CacheServiceStub,
    pstub: ppb_grpc.ProcessorServiceStub,
    processor_server: ServiceProcess,
    bound: str,
) -> None:
    # An image this processor has never seen: no render of it starts before the lookup.
    image_id = upload(stub, png_bytes(300, 200, seed=61)).id
    request = process_request(image_id, Op(resize=ppb.Resize(width=61)))
    # The caller's time: the call's deadline, or (a caller streaming on to a slow reader,
    # as the gateway does) render_timeout on a call with no deadline.
    timeout = 4.0 if bound == "deadline" else None
    if bound == "render_timeout":
        request.render_timeout.FromTimedelta(timedelta(seconds=4))
    key = spec.parse(
        request.transformation.operations,
        request.transformation.output,
        spec.RequestLimits(8192, 100),
    ).key(image_id)
    # Another processor claims the render, then dies: its lease outlives the call.
    (held,) = stub.GetVariant(pb.GetVariantRequest(image_id=image_id, key=key, claim=True))
    assert held.miss.claimed
    started = time.monotonic()
    meta, data = collect(pstub.Process(request, timeout=timeout))
    took = time.monotonic() - started
    assert (meta.key, open_image(data).width) == (key, 61)
    assert 1.8 < took < 3.5  # waited half its time for the other render, then made it
    assert processed_keys(processor_server).count(key) == 1


def test_identical_concurrent_misses_are_processed_once(
    pstub: ppb_grpc.ProcessorServiceStub, processor_server: ServiceProcess, big_id: str
) -> None:
    request = process_request(
        big_id, Op(resize=ppb.Resize(width=311)), Op(sharpen=ppb.Sharpen(sigma=1))
    )
    barrier = threading.Barrier(8)

    def call(_: int) -> tuple[str, bytes]:
        barrier.wait()
        meta, data = collect(pstub.Process(request, timeout=60))
        return meta.key, data

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert len(set(results)) == 1
    assert processed_keys(processor_server).count(results[0][0]) == 1


def test_delete_purges_the_processors_variants(
    pstub: ppb_grpc.ProcessorServiceStub,
    stub: pb_grpc.CacheServiceStub,
    cache_server: ServiceProcess,
) -> None:
    image_id = upload(stub, big_jpeg(1)).id
    for width in (50, 60, 70):
        meta, _ = collect(
            pstub.Process(process_request(image_id, Op(resize=ppb.Resize(width=width))))
        )
        stored(stub, image_id, meta.key)  # so the delete below has all three to purge
    lookups = variant_lookups(cache_server)
    collect(pstub.Process(process_request(image_id, Op(resize=ppb.Resize(width=50)))))
    # Held in the processor's memory: the cache service was not even asked.
    assert variant_lookups(cache_server) == lookups
    assert stub.DeleteImage(pb.DeleteImageRequest(id=image_id)).purged_variants == 3
    # The processor hears of the delete through WatchDeletions.
    request = process_request(image_id, Op(resize=ppb.Resize(width=50)))
    wait_for(lambda: gone(pstub, request), "refusal of a deleted image's variant", 2, 0.01)


def test_request_id_reaches_the_cache_logs(
    pstub: ppb_grpc.ProcessorServiceStub, cache_server: ServiceProcess, big_id: str
) -> None:
    request = process_request(big_id, Op(resize=ppb.Resize(width=33)))
    collect(pstub.Process(request, metadata=(("x-request-id", "trace-me-123"),)))
    seen = [e for e in cache_server.log_entries() if e.get("request_id") == "trace-me-123"]
    assert "GetVariant" in {str(e["method"]).rsplit("/", 1)[1] for e in seen}


def test_every_call_is_logged_once_after_it_ends(
    start_processor: Callable[[dict[str, str]], ServiceProcess], big_id: str
) -> None:
    server = start_processor({"IMAGESVC_CHUNK_BYTES": "4KiB"})
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        ok = process_request(big_id, Op(resize=ppb.Resize(width=34)))
        collect(pstub.Process(ok, metadata=(("x-request-id", "log-ok"),)))
        bad = process_request("not-an-id")
        failure(pstub.Process, bad, metadata=(("x-request-id", "log-bad"),))
        hang_up_mid_answer(pstub, big_png(big_id, 1700), "log-gone")
        # The hung-up call's line comes once the server has seen it go.
        wait_for(
            lambda: any(e.get("request_id") == "log-gone" for e in rpc_lines(server)),
            "line for the hung-up call",
            timeout=5,
        )
    lines = {str(e["request_id"]): e for e in rpc_lines(server)}
    ends = [(lines[r]["code"], lines[r]["reason"]) for r in ("log-ok", "log-bad", "log-gone")]
    assert ends == [("OK", ""), ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), ("CANCELLED", "")]
    assert all(float(str(lines[r]["ms"])) > 0 for r in ("log-ok", "log-bad", "log-gone"))
    rids = [e.get("request_id") for e in rpc_lines(server)]
    assert all(rids.count(r) == 1 for r in ("log-ok", "log-bad", "log-gone"))


def big_png(image_id: str, width: int) -> ppb.ProcessRequest:
    """A variant far larger than gRPC sends before the caller reads, in 4 KiB messages."""
    return process_request(
        image_id, Op(resize=ppb.Resize(width=width)), format=ppb.OUTPUT_FORMAT_PNG
    )


def hang_up_mid_answer(
    pstub: ppb_grpc.ProcessorServiceStub, request: ppb.ProcessRequest, rid: str
) -> ppb.ProcessResponse:
    """Process's first message; the caller then hangs up, the rest unsent."""
    answer = pstub.Process(request, timeout=60, metadata=(("x-request-id", rid),))
    first = next(iter(answer))
    answer.cancel()  # type: ignore[no-untyped-call]
    return first


def rpc_lines(server: ServiceProcess) -> list[dict[str, object]]:
    return [e for e in server.log_entries() if e.get("msg") == "rpc"]


@pytest.fixture
def start_processor(
    cache_server: ServiceProcess, tmp_path: Path
) -> Iterator[Callable[[dict[str, str]], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(env: dict[str, str]) -> ServiceProcess:
        server = ServiceProcess(
            "processor",
            tmp_path / f"p{len(started)}",
            {"IMAGESVC_CACHE_ADDRESS": cache_server.address, **env},
        )
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.kill()


def stored(stub: pb_grpc.CacheServiceStub, image_id: str, key: str) -> bytes:
    """The variant's bytes once the cache holds them (stores follow the answer)."""
    deadline = time.monotonic() + 5
    while (data := get_variant(stub, image_id, key)) is None:
        assert time.monotonic() < deadline, f"variant {key} was never stored"
        time.sleep(0.02)
    return data


def test_variants_are_stored_after_the_answer_traced_to_their_request(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    cache_server: ServiceProcess,
    stub: pb_grpc.CacheServiceStub,
    big_id: str,
) -> None:
    server = start_processor({"IMAGESVC_CHUNK_BYTES": "4KiB"})
    sizes = {"tiny": 16, "large": 900}  # a 16 px JPEG fits one 4 KiB message; 900 px does not
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        made = {
            name: collect(
                pstub.Process(
                    process_request(big_id, Op(resize=ppb.Resize(width=width)), quality=37),
                    metadata=(("x-request-id", f"store-{name}"),),
                )
            )
            for name, width in sizes.items()
        }
    assert len(made["tiny"][1]) <= 4096 < len(made["large"][1])
    for meta, data in made.values():
        assert stored(stub, big_id, meta.key) == data
    streamed = {e.get("request_id") for e in cache_calls(cache_server, "PutVariant")}
    assert {"store-large", "store-tiny"} <= streamed


def test_cached_variants_come_whole_or_streamed_by_size(tmp_path: Path) -> None:
    # The cache answers a variant whole when it fits one of its messages (4 KiB here).
    env = {"IMAGESVC_CHUNK_BYTES": "4KiB", "IMAGESVC_PROCESSOR_HOT_CACHE_BYTES": "0"}
    cache = ServiceProcess("cache", tmp_path / "cache", env).start()
    started = [cache]
    try:
        with channel(cache.address) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            image_id = upload(stub, big_jpeg(5)).id
            sizes = {"tiny": 17, "large": 901}
            made = {}
            for name in ("maker", "reader"):
                started.append(
                    ServiceProcess(
                        "processor",
                        tmp_path / name,
                        {**env, "IMAGESVC_CACHE_ADDRESS": cache.address},
                    ).start()
                )
            with channel(started[1].address) as pch:
                pstub = ppb_grpc.ProcessorServiceStub(pch)
                for name, width in sizes.items():
                    request = process_request(image_id, Op(resize=ppb.Resize(width=width)))
                    meta, data = collect(pstub.Process(request))
                    assert stored(stub, image_id, meta.key) == data
                    made[name] = data
            assert len(made["tiny"]) <= 4096 < len(made["large"])
            with channel(started[2].address) as pch:  # holds nothing: answers from the cache
                pstub = ppb_grpc.ProcessorServiceStub(pch)
                for name, width in sizes.items():
                    request = process_request(image_id, Op(resize=ppb.Resize(width=width)))
                    rid = (("x-request-id", f"read-{name}"),)
                    answers = list(pstub.Process(request, metadata=rid))
                    assert answers[0].cache_hit
                    assert b"".join(a.chunk for a in answers) == made[name]
        reads = {
            (str(e["request_id"]), str(e["method"]).rsplit("/", 1)[1])
            for e in variant_reads(cache)
            if str(e.get("request_id", "")).startswith("read-")
        }
        assert reads == {("read-tiny", "GetVariant"), ("read-large", "GetVariant")}
    finally:
        for server in started:
            server.kill()


def test_render_timeout_bounds_the_wait_and_the_render_goes_on(
    pstub: ppb_grpc.ProcessorServiceStub, processor_server: ServiceProcess, big_id: str
) -> None:
    request = process_request(big_id, Op(resize=ppb.Resize(width=1301)), quality=44)
    request.render_timeout.FromTimedelta(timedelta(milliseconds=1))
    late = failure(pstub.Process, request)
    assert (late.code, late.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    # The render went on and was kept: asked again with time to wait, it is not made again.
    request.ClearField("render_timeout")
    meta, data = collect(pstub.Process(request, timeout=30))
    assert open_image(data).width == 1301
    assert processed_keys(processor_server).count(meta.key) == 1


def test_a_variant_another_processor_made_is_answered_from_the_cache(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    cache_server: ServiceProcess,
    cache_channel: grpc.Channel,
    big_id: str,
) -> None:
    maker, other = start_processor({}), start_processor({})
    request = process_request(big_id, Op(resize=ppb.Resize(width=57)), quality=61)
    with channel(maker.address) as ch:
        made_meta, made_data = collect(ppb_grpc.ProcessorServiceStub(ch).Process(request))
    with channel(other.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        # The other processor holds the original (from its own variant) and has never
        # seen this key: still it asks the cache first, and renders nothing.
        collect(pstub.Process(process_request(big_id, Op(resize=ppb.Resize(width=58)))))
        stored(pb_grpc.CacheServiceStub(cache_channel), big_id, made_meta.key)
        rid = (("x-request-id", "made-elsewhere"),)
        (answer,) = pstub.Process(request, metadata=rid)
    assert answer.cache_hit and (answer.variant, answer.chunk) == (made_meta, made_data)
    assert renders(other) == 1  # width 58's alone
    assert other.terminate() == 0
    lookups = cache_calls(cache_server, "GetVariant")
    assert [e.get("request_id") for e in lookups].count("made-elsewhere") == 1


def test_a_caller_that_hangs_up_mid_answer_still_gets_the_render_stored(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    stub: pb_grpc.CacheServiceStub,
    big_id: str,
) -> None:
    server = start_processor({"IMAGESVC_CHUNK_BYTES": "4KiB"})
    request = big_png(big_id, 1800)
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        first = hang_up_mid_answer(pstub, request, "hangs-up")
        key = first.variant.key
        data = stored(stub, big_id, key)
        assert len(data) == first.variant.byte_size
        # The key is not stuck in flight: the same request is answered, from the cache.
        meta, again = collect(pstub.Process(request, timeout=60))
        assert (meta.key, again) == (key, data)


def test_a_render_for_an_image_gone_meanwhile_is_not_stored(tmp_path: Path) -> None:
    # The delete goes through a second cache service on the same storage (as replicas
    # sharing their backends do): the processor's deletion watch on the first never
    # hears of it, and learns that the image is gone only from the cache's answer, as
    # when a delete and a request cross.
    first = ServiceProcess("cache", tmp_path / "data").start()
    second = ServiceProcess("cache", tmp_path / "data").start()
    server = ServiceProcess(
        "processor", tmp_path / "p", {"IMAGESVC_CACHE_ADDRESS": first.address}
    ).start()
    try:
        with channel(first.address) as ch, channel(second.address) as other:
            image_id = upload(pb_grpc.CacheServiceStub(ch), png_bytes(60, 40, seed=9)).id
            with channel(server.address) as pch:
                pstub = ppb_grpc.ProcessorServiceStub(pch)
                request = process_request(image_id, Op(resize=ppb.Resize(width=30)))
                collect(pstub.Process(request))
                pb_grpc.CacheServiceStub(other).DeleteImage(pb.DeleteImageRequest(id=image_id))
                # The processor still holds the original, yet renders nothing before
                # the cache has said whether the image exists.
                request = process_request(image_id, Op(resize=ppb.Resize(width=31)))
                assert failure(pstub.Process, request).reason == Reason.IMAGE_NOT_FOUND
        assert server.terminate() == 0  # every store there was to make is made by now
    finally:
        for process in (server, second, first):
            process.kill()
    assert len(processed_keys(server)) == 1  # the first variant's alone


@pytest.mark.parametrize("hot_cache", ["64MiB", "0"])
def test_a_deleted_images_original_leaves_the_processors_memory(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    stub: pb_grpc.CacheServiceStub,
    hot_cache: str,
) -> None:
    image_id = upload(stub, png_bytes(60, 40, seed=10 if hot_cache == "0" else 11)).id
    server = start_processor({"IMAGESVC_PROCESSOR_HOT_CACHE_BYTES": hot_cache})
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        collect(pstub.Process(process_request(image_id, Op(resize=ppb.Resize(width=30)))))
        stub.DeleteImage(pb.DeleteImageRequest(id=image_id))
        # The deletion reaches the processor through WatchDeletions, which drops the
        # variant held in memory (with a hot cache) and the original with it; until then
        # the variant is served from memory. Asked of the cache, it is gone: no render.
        held = process_request(image_id, Op(resize=ppb.Resize(width=30)))
        wait_for(lambda: gone(pstub, held), "deletion heard by the processor")
        request = process_request(image_id, Op(resize=ppb.Resize(width=31)))
        assert failure(pstub.Process, request).reason == Reason.IMAGE_NOT_FOUND
    assert renders(server) == 1


def test_concurrent_misses_are_all_stored(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    stub: pb_grpc.CacheServiceStub,
) -> None:
    image_id = upload(stub, png_bytes(64, 48, noise=True)).id
    server = start_processor({})
    with channel(server.address) as ch, ThreadPoolExecutor(8) as pool:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        answers = list(
            pool.map(
                lambda width: collect(
                    pstub.Process(process_request(image_id, Op(resize=ppb.Resize(width=width))))
                ),
                range(20, 28),
            )
        )
    for meta, data in answers:
        assert stored(stub, image_id, meta.key) == data


def test_a_processor_stopping_stores_what_it_made(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    stub: pb_grpc.CacheServiceStub,
) -> None:
    image_id = upload(stub, png_bytes(40, 30, seed=3)).id
    server = start_processor({})
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        meta, data = collect(
            pstub.Process(process_request(image_id, Op(resize=ppb.Resize(width=11))))
        )
    assert server.terminate() == 0  # at once: the variant has not been sent yet
    assert get_variant(stub, image_id, meta.key) == data


def test_concurrent_misses_of_one_original_fetch_it_once(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    cache_server: ServiceProcess,
    stub: pb_grpc.CacheServiceStub,
) -> None:
    image_id = upload(stub, big_jpeg(2)).id
    server = start_processor({})  # holds no originals yet
    barrier = threading.Barrier(6)
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)

        def call(n: int) -> int:
            request = process_request(image_id, Op(resize=ppb.Resize(width=40 + n)))
            barrier.wait()
            metadata = (("x-request-id", f"herd-{n}"),)
            return collect(pstub.Process(request, timeout=60, metadata=metadata))[0].width

        with ThreadPoolExecutor(6) as pool:
            assert sorted(pool.map(call, range(6))) == [40, 41, 42, 43, 44, 45]
    fetches = [
        e
        for e in cache_server.log_entries()
        if str(e.get("request_id", "")).startswith("herd-") and "GetImage" in str(e["method"])
    ]
    assert len(fetches) == 1


def test_overload_is_refused_promptly(
    start_processor: Callable[[dict[str, str]], ServiceProcess], big_id: str
) -> None:
    server = start_processor({"IMAGESVC_PROCESSOR_WORKERS": "1", "IMAGESVC_PROCESSOR_QUEUE": "1"})
    outcomes: list[tuple[str, float]] = []
    barrier = threading.Barrier(6)
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)

        def call(n: int) -> None:
            request = process_request(big_id, Op(blur=ppb.Blur(sigma=20 + n)))
            barrier.wait()
            start = time.perf_counter()
            try:
                collect(pstub.Process(request, timeout=60))
                outcomes.append(("ok", time.perf_counter() - start))
            except grpc.RpcError as exc:
                error = remote_error(exc)
                assert (error.code, error.reason) == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    Reason.OVERLOADED,
                )
                outcomes.append(("busy", time.perf_counter() - start))

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(call, range(6)))
    busy = [t for kind, t in outcomes if kind == "busy"]
    done = [t for kind, t in outcomes if kind == "ok"]
    assert len(done) >= 2 and len(busy) >= 1
    assert max(busy) < min(max(done), 1.0)  # refused at once, not after waiting in line


def test_processing_deadline(
    start_processor: Callable[[dict[str, str]], ServiceProcess], big_id: str
) -> None:
    server = start_processor({"IMAGESVC_PROCESSING_TIMEOUT_SECONDS": "0.1"})
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        error = failure(pstub.Process, process_request(big_id, Op(blur=ppb.Blur(sigma=45))))
    assert (error.code, error.reason) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        Reason.DEADLINE_EXCEEDED,
    )


def test_cache_down_is_unavailable_and_bytes_still_work(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    server = start_processor({"IMAGESVC_CACHE_ADDRESS": dead})
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        error = failure(pstub.Process, process_request("A" * 22), timeout=10)
        assert (error.code, error.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
        )
        png = io.BytesIO()
        Image.new("RGB", (40, 20)).save(png, "PNG")
        meta, _ = collect(
            pstub.ProcessBytes(bytes_requests(png.getvalue(), Op(resize=ppb.Resize(width=10))))
        )
        assert (meta.width, meta.height) == (10, 5)


def test_process_bytes_limits(pstub: ppb_grpc.ProcessorServiceStub) -> None:
    def no_spec() -> Iterator[ppb.ProcessBytesRequest]:
        yield ppb.ProcessBytesRequest(chunk=b"x")

    assert failure(pstub.ProcessBytes, no_spec()).metadata["field"] == "spec"

    def too_big() -> Iterator[ppb.ProcessBytesRequest]:
        yield ppb.ProcessBytesRequest(spec=ppb.ProcessBytesSpec())
        for _ in range(60 * 4):
            yield ppb.ProcessBytesRequest(chunk=b"\0" * (256 * 1024))

    error = failure(pstub.ProcessBytes, too_big())
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.PAYLOAD_TOO_LARGE)
    small = io.BytesIO()
    Image.new("L", (20, 10)).save(small, "PNG")
    outside = ppb.Resize(width=8192, height=8192, fit=ppb.FIT_OUTSIDE, enlarge=True)
    error = failure(pstub.ProcessBytes, bytes_requests(small.getvalue(), Op(resize=outside)))
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.OUTPUT_TOO_LARGE)


def test_process_bytes_refuses_a_bad_spec_before_reading_the_bytes(
    pstub: ppb_grpc.ProcessorServiceStub,
) -> None:
    pulled = 0

    def requests() -> Iterator[ppb.ProcessBytesRequest]:
        nonlocal pulled
        spec = ppb.ProcessBytesSpec(
            transformation=ppb.Transformation(operations=[Op(blur=ppb.Blur(sigma=999))])
        )
        yield ppb.ProcessBytesRequest(spec=spec)
        while pulled < 1000:
            pulled += 1
            time.sleep(0.002)
            yield ppb.ProcessBytesRequest(chunk=b"\0" * 65536)

    error = failure(pstub.ProcessBytes, requests())
    assert error.metadata["field"] == "blur.sigma"
    assert pulled < 1000


def test_animations_are_bounded_as_a_whole(pstub: ppb_grpc.ProcessorServiceStub) -> None:
    from tests.support import CORPUS

    data = (CORPUS / "pillow/iss634.webp").read_bytes()  # 42 frames
    big = Op(resize=ppb.Resize(width=2048, height=2048, fit=ppb.FIT_FILL, enlarge=True))
    error = failure(pstub.ProcessBytes, bytes_requests(data, big, format=ppb.OUTPUT_FORMAT_WEBP))
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.OUTPUT_TOO_LARGE)
    small = Op(resize=ppb.Resize(width=64))
    meta, _ = collect(
        pstub.ProcessBytes(bytes_requests(data, small, format=ppb.OUTPUT_FORMAT_WEBP))
    )
    assert meta.width == 64


class ScriptedCache(pb_grpc.CacheServiceServicer):
    """A cache service for scripted faults: it stores variants in a list and announces no
    deletion; the methods it leaves out answer UNIMPLEMENTED, as generated."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def PutVariant(self, request_iterator: Iterator[pb.PutVariantRequest], context: object) -> Any:
        self.stored += [r.header.key for r in request_iterator if r.HasField("header")]
        return pb.PutVariantResponse(variant=image_pb2.VariantMetadata())

    def WatchDeletions(self, request: pb.WatchDeletionsRequest, context: Any) -> Iterator[Any]:
        while context.is_active():
            time.sleep(0.05)
        yield from ()


class GatedCache(ScriptedCache):
    """A cache service that holds no variant and sends an original only once the test
    opens the gate: a render that cannot finish until the test says so."""

    def __init__(self, original: bytes) -> None:
        super().__init__()
        self.original = original
        self.gate = threading.Event()
        self.fetching = threading.Event()
        self.lookups = 0
        self.looked_up = threading.Condition()

    def GetImage(self, request: pb.GetImageRequest, context: object) -> Iterator[Any]:
        self.fetching.set()
        self.gate.wait(60)
        yield pb.GetImageResponse(chunk=self.original)

    def GetVariant(self, request: pb.GetVariantRequest, context: object) -> Iterator[Any]:
        with self.looked_up:
            self.lookups += 1
            self.looked_up.notify_all()
        yield pb.GetVariantResponse(miss=pb.VariantMiss(claimed=request.claim))


@pytest.fixture
def scripted_cache() -> Iterator[Callable[[pb_grpc.CacheServiceServicer], str]]:
    """Serve a scripted cache service on a loopback port (its address): for the faults
    a real cache cannot be made to show on cue."""
    servers: list[grpc.Server] = []

    def serve(servicer: pb_grpc.CacheServiceServicer) -> str:
        server = grpc.server(ThreadPoolExecutor(8))
        pb_grpc.add_CacheServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield serve
    for server in servers:
        server.stop(None)


def test_a_hasty_caller_does_not_fail_the_others_sharing_its_render(
    scripted_cache: Callable[[pb_grpc.CacheServiceServicer], str], tmp_path: Path
) -> None:
    cache = GatedCache(png_bytes(1200, 900, seed=8))  # type: ignore[abstract]
    processor = ServiceProcess(
        "processor", tmp_path / "p", {"IMAGESVC_CACHE_ADDRESS": scripted_cache(cache)}
    ).start()
    request = process_request("A" * 22, Op(resize=ppb.Resize(width=999)))
    outcomes: dict[str, object] = {}

    def hasty(pstub: ppb_grpc.ProcessorServiceStub) -> None:
        try:
            collect(pstub.Process(request, timeout=1))
            outcomes["hasty"] = "ok"
        except grpc.RpcError as exc:
            outcomes["hasty"] = exc.code()

    def patient(pstub: ppb_grpc.ProcessorServiceStub) -> None:
        outcomes["patient"] = collect(pstub.Process(request, timeout=60))[0].width

    try:
        with channel(processor.address) as ch:
            pstub = ppb_grpc.ProcessorServiceStub(ch)
            first = threading.Thread(target=hasty, args=(pstub,))
            first.start()
            # The hasty caller's render has started: it waits for the original.
            assert cache.fetching.wait(30)
            second = threading.Thread(target=patient, args=(pstub,))
            second.start()
            with cache.looked_up:
                assert cache.looked_up.wait_for(lambda: cache.lookups == 2, 30)
            # The render cannot end before the gate opens: the hasty caller's deadline
            # passes first, whatever the machine's speed.
            first.join()
            cache.gate.set()
            second.join()
        assert processor.terminate() == 0
    finally:
        cache.gate.set()
        processor.kill()
    assert outcomes == {"hasty": grpc.StatusCode.DEADLINE_EXCEEDED, "patient": 999}


def test_a_render_whose_caller_left_during_the_fetch_is_logged(
    start_processor: Callable[[dict[str, str]], ServiceProcess],
    stub: pb_grpc.CacheServiceStub,
    big_id: str,
) -> None:
    # No originals held: every render waits for a 2 MB fetch first, a window in which
    # the caller hangs up; the render goes on, is stored, and must be logged.
    server = start_processor({"IMAGESVC_PROCESSOR_ORIGINALS_CACHE_BYTES": "0"})
    # Hang-ups from 2 ms to 0.4 s after asking: on a busy machine the earliest may come
    # before the processor has the call, the latest after the render; the rest fall
    # in between, and every render that did start must be stored and logged.
    delays = (0.002, 0.01, 0.04, 0.15, 0.4)
    requests = [
        process_request(big_id, Op(resize=ppb.Resize(width=70 + n))) for n in range(len(delays))
    ]
    with channel(server.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        for delay, request in zip(delays, requests, strict=True):
            answer = pstub.Process(request, timeout=30)
            time.sleep(delay)
            answer.cancel()  # type: ignore[no-untyped-call]
    assert server.terminate() == 0  # renders still running finish and are stored first
    keys = [
        spec.parse(
            r.transformation.operations, r.transformation.output, spec.RequestLimits(8192, 100)
        ).key(big_id)
        for r in requests
    ]
    made = [key for key in keys if get_variant(stub, big_id, key) is not None]
    assert made, "no render outlived its caller: the test saw nothing"
    assert sorted(made) == sorted(set(processed_keys(server)) & set(keys))
