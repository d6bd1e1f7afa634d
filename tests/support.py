"""Real servers as subprocesses on ephemeral loopback ports, and small gRPC client helpers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2
from imageservice.v1 import processor_service_pb2 as ppb
from PIL import Image

from common.env import Env
from common.errors import RemoteError, remote_error
from common.grpcclient import blocking_channel
from common.grpcserver import REQUEST_ID_KEY
from common.tls import Tls

ROOT = Path(__file__).resolve().parent.parent
GRPC_SERVICES = frozenset({"cache", "processor"})


def _shared() -> Path:
    """../shared (the corpus, the Compose schema) beside this checkout; for a clone made
    elsewhere (CI clones into a temporary folder), the one beside the checkout it was
    cloned from."""
    beside = ROOT.parent / "shared"
    if beside.is_dir():
        return beside
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        cloned_from = Path(origin).resolve().parent / "shared"
        if cloned_from.is_dir():
            return cloned_from
    return beside


SHARED = _shared()
CORPUS = Path(os.environ.get("IMAGESVC_TEST_CORPUS") or SHARED / "corpus")
CHUNK = 256 * 1024


class ServiceProcess:
    """`python -m <module>` with IMAGESVC_* settings, listening on a port it picks itself."""

    def __init__(
        self,
        module: str,
        data_dir: Path,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.module = module
        self.data_dir = data_dir
        self.env = env or {}
        self.prefix = prefix  # e.g. ("taskset", "-c", "0") to pin it to one core
        self.log_path = data_dir.parent / f"{data_dir.name}-{module}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        env = {
            **os.environ,
            "IMAGESVC_DATA_DIR": str(self.data_dir),
            "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",
            "IMAGESVC_PROCESSOR_LISTEN": "127.0.0.1:0",
            "IMAGESVC_GATEWAY_PORT": "0",
            **self.env,
        }
        log = self.log_path.open("ab")
        offset = log.tell()
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", self.module],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited early:\n{self.log_text()}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                for line in f:
                    if line.startswith(b"{"):
                        entry = json.loads(line)
                        if entry.get("msg") == "listening":
                            self.port = int(entry["port"])
                            return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.module} did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def log_entries(self) -> list[dict[str, object]]:
        """The log's JSON entries, including the lines of every call answered so far."""
        self._wait_for_call_lines()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def _wait_for_call_lines(self, timeout: float = 10.0) -> None:
        # A gRPC service logs a call after answering it, so a caller may read the log
        # before the line is there. Calls are logged in the order they end: once a
        # health check made now is logged, every call answered before it is too.
        level = {**os.environ, **self.env}.get("IMAGESVC_LOG_LEVEL", "INFO")
        logs_calls = level.upper() in ("INFO", "DEBUG")
        if self.module not in GRPC_SERVICES or not logs_calls or not self.running:
            return
        marker = f"log-barrier-{os.urandom(8).hex()}".encode()
        with channel(self.address, Tls.from_env(Env({**os.environ, **self.env}))) as ch:
            health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(),
                metadata=((REQUEST_ID_KEY, marker.decode()),),
                timeout=timeout,
            )
        deadline = time.monotonic() + timeout
        while marker not in self.log_path.read_bytes():
            assert time.monotonic() < deadline, f"{self.module} never logged its health check"
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.port != 0

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_all(
    root: Path,
    cache_env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
    processor_env: dict[str, str] | None = None,
) -> tuple[ServiceProcess, ServiceProcess, ServiceProcess]:
    """A cache, a processor and a gateway of their own, their data under root."""
    cache = ServiceProcess("cache", root / "c", cache_env).start()
    processor = ServiceProcess(
        "processor", root / "p", {"IMAGESVC_CACHE_ADDRESS": cache.address, **(processor_env or {})}
    ).start()
    upstreams = {
        "IMAGESVC_CACHE_ADDRESS": cache.address,
        "IMAGESVC_PROCESSOR_ADDRESSES": processor.address,
    }
    gateway = ServiceProcess("gateway", root / "g", {**upstreams, **(gateway_env or {})}).start()
    return cache, processor, gateway


def channel(address: str, tls: Tls | None = None) -> grpc.Channel:
    return blocking_channel(address, tls)


def upload_requests(
    data: bytes,
    filename: str = "image",
    owner: str = "",
    visibility: image_pb2.Visibility.ValueType = image_pb2.VISIBILITY_PUBLIC,
    pause: float = 0.0,
) -> Iterator[pb.PutImageRequest]:
    header = pb.PutImageHeader(original_filename=filename, owner=owner, visibility=visibility)
    yield pb.PutImageRequest(header=header)
    for start in range(0, len(data), CHUNK):
        if pause:
            time.sleep(pause)
        yield pb.PutImageRequest(chunk=data[start : start + CHUNK])


def upload(
    stub: pb_grpc.CacheServiceStub, data: bytes, **header: object
) -> image_pb2.ImageMetadata:
    response: pb.PutImageResponse = stub.PutImage(upload_requests(data, **header), timeout=60)  # type: ignore[arg-type]
    return response.image


def download(
    stub: pb_grpc.CacheServiceStub, image_id: str
) -> tuple[image_pb2.ImageMetadata, bytes]:
    meta = image_pb2.ImageMetadata()
    body = bytearray()
    for message in stub.GetImage(pb.GetImageRequest(id=image_id), timeout=60):
        if message.WhichOneof("payload") == "image":
            meta = message.image
        else:
            body += message.chunk
    return meta, bytes(body)


def failure(call: object, *args: object, **kwargs: object) -> RemoteError:
    """Call and return the decoded error; fail if the call succeeds."""
    try:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    except grpc.RpcError as exc:
        return remote_error(exc)
    raise AssertionError("the call succeeded")


def native_messages(server: ServiceProcess, timeout: float = 5.0) -> list[str]:
    """What C libraries printed in server, as its log gives them; fails if any line of
    the log is not JSON, or if nothing such arrives within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        native = [str(e["msg"]) for e in server.log_entries() if e.get("logger") == "native"]
        if native or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = server.log_path.read_text(errors="replace").splitlines()
    assert [line for line in lines if line.strip() and not line.startswith("{")] == []
    assert native, "nothing a C library printed reached the log"
    return native


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png_bytes(width: int, height: int, seed: int = 0, noise: bool = False) -> bytes:
    """A distinct PNG; noise makes it incompressible (big files)."""
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (seed % 256, (seed // 256) % 256, 99))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    format: str
    expected: str
    note: str
    width: int = 0  # 0: the manifest does not say
    height: int = 0

    @property
    def name(self) -> str:
        return str(self.path.relative_to(CORPUS))


# MANIFEST.tsv is shared and written for Pillow alone, which marks HEIC `unsupported`;
# with pillow-heif the service reads them, so the tests take these rows as valid, with
# the size pillow-heif reports: libheif applies the container's rotation, so the iPhone
# picture stored 4032x3024 (its note) is 3024x4032 upright, as every viewer shows it.
HEIF_OVERRIDES = {
    "metadata-extractor-images/apple-iphone-11-pro_display-p3.heic": ("HEIF", 3024, 4032, "RGB"),
    "pillow/avif/hopper.heif": ("HEIF", 128, 128, "RGB"),
}


def corpus() -> list[CorpusFile]:
    files = []
    with (CORPUS / "MANIFEST.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["path"] in HEIF_OVERRIDES:
                fmt, width, height, mode = HEIF_OVERRIDES[row["path"]]
                row.update(format=fmt, width=str(width), height=str(height), mode=mode)
                row["expected"] = "valid"
            width, height = (int(row[k]) if row[k].isdigit() else 0 for k in ("width", "height"))
            path = CORPUS / row["path"]
            files.append(
                CorpusFile(path, row["format"], row["expected"], row["note"], width, height)
            )
    return files


def process_request(image_id: str, *ops: ppb.Operation, **output: object) -> ppb.ProcessRequest:
    return ppb.ProcessRequest(image_id=image_id, transformation=transformation(*ops, **output))


def transformation(*ops: ppb.Operation, **output: object) -> ppb.Transformation:
    return ppb.Transformation(
        operations=list(ops),
        output=ppb.OutputOptions(**output),  # type: ignore[arg-type]
    )


def whole_request(request: ppb.ProcessRequest) -> ppb.ProcessWholeRequest:
    """The same request for ProcessWhole."""
    return ppb.ProcessWholeRequest(image_id=request.image_id, transformation=request.transformation)


def collect(responses: Iterable[Any]) -> tuple[image_pb2.VariantMetadata, bytes]:
    """The variant metadata and bytes from a Process or ProcessBytes stream."""
    meta = image_pb2.VariantMetadata()
    body = bytearray()
    for message in responses:
        if message.HasField("variant"):  # the first message, which may carry bytes too
            meta = message.variant
        body += message.chunk
    return meta, bytes(body)


def bytes_requests(
    data: bytes, *ops: ppb.Operation, **output: object
) -> Iterator[ppb.ProcessBytesRequest]:
    spec = ppb.ProcessBytesSpec(transformation=transformation(*ops, **output))
    yield ppb.ProcessBytesRequest(spec=spec)
    for start in range(0, len(data), CHUNK):
        yield ppb.ProcessBytesRequest(chunk=data[start : start + CHUNK])


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def free_port() -> int:
    """A loopback port nothing listens on (for a service that must come back on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"]
    assert "Traceback" not in response.text
    return body
