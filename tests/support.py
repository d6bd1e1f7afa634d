"""Real servers as subprocesses on ephemeral loopback ports, and small gRPC client helpers."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2
from imageservice.v1 import processor_service_pb2 as ppb
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from cache.config import DEFAULT_FORMATS
from common import ports
from common.env import Env
from common.errors import Reason, RemoteError, remote_error
from common.grpcclient import blocking_channel
from common.grpcserver import REQUEST_ID_KEY
from common.tls import Tls
from launcher.plan import PORT_STRIDE
from processor import pipeline, spec

if TYPE_CHECKING:
    from processor import faces  # cv2, loaded only by the tests that detect faces

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
        self.metrics_port = 0  # a gRPC service's, when its METRICS_PORT variable is set

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where its Prometheus metrics are: a gateway's /metrics, or a gRPC service's
        metrics port."""
        port = self.port if self.module == "gateway" else self.metrics_port
        assert port, f"{self.module} serves no metrics (set its METRICS_PORT variable)"
        return f"http://127.0.0.1:{port}/metrics"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        env = {
            **os.environ,
            "IMAGESVC_DATA_DIR": str(self.data_dir),
            "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",
            "IMAGESVC_PROCESSOR_LISTEN": "127.0.0.1:0",
            "IMAGESVC_GATEWAY_PORT": "0",
            # Metrics on a port of their own, so tests can count with `metric`.
            "IMAGESVC_CACHE_METRICS_PORT": "0",
            "IMAGESVC_PROCESSOR_METRICS_PORT": "0",
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
                            self.metrics_port = int(entry.get("metrics_port") or 0)
                            return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.module} did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def log_entries(self) -> list[dict[str, object]]:
        """The log's JSON entries, including the lines of every call answered so far."""
        self._wait_for_call_lines()
        return json_entries(self.log_path.read_text(errors="replace"))

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
        wait_for(
            lambda: marker in self.log_path.read_bytes(),
            f"health check in the {self.module} log",
            timeout,
            every=0.01,
        )

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


def json_entries(text: str) -> list[dict[str, object]]:
    """The JSON lines of a log (other lines, such as a launcher's own, are skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


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


def paired_ratio(times: list[float], others: list[float]) -> float:
    """The median over rounds of each time over the other measured beside it. Load that
    comes and goes slows both of a pair alike; medians taken apart are pulled about by
    it (1.43 against 0.98-1.13 paired, for the same calls with both cores busy)."""
    return statistics.median(a / b for a, b in zip(times, others, strict=True))


def wait_for(
    condition: Callable[[], object], what: str, timeout: float = 10.0, every: float = 0.02
) -> None:
    """Return once condition() holds; fail naming what if it does not within timeout
    seconds. Waiting on the thing itself, not for a fixed while, keeps a test right on
    a machine whose cores are busy: it only takes longer."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(every)


def free_port() -> int:
    """A loopback port nothing listens on (for a service that must come back on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServiceProcess) -> Samples:
    """Every sample server's metrics endpoint exposes, by name and labels."""
    text = httpx.get(server.metrics_url, timeout=10).raise_for_status().text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it is not exposed (a series not yet touched)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def metric(server: ServiceProcess, name: str, **labels: str) -> float:
    """The sum of name's samples on server whose labels include labels (all codes of a
    method, say), every call answered so far counted."""
    # A call is counted as it ends, just before its line is logged: once the log holds
    # a call made now, every call answered before it is counted too.
    server._wait_for_call_lines()
    wanted = labels.items()
    return sum(
        value
        for (sample_name, sample_labels), value in scrape(server).items()
        if sample_name == name and wanted <= dict(sample_labels).items()
    )


def is_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"]
    assert "Traceback" not in response.text
    return body


# docker-compose.yml, and the scale-out overlay merged onto it as Compose merges files.

SCALE = ROOT / "docker-compose.scale.yml"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@dataclass(frozen=True)
class Override:
    """A value tagged !override: it replaces the base file's instead of merging."""

    value: Any


@dataclass(frozen=True)
class Reset:
    """A value tagged !reset: the base file's is removed."""


class _OverlayLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags."""


_OverlayLoader.add_constructor(
    "!override",
    lambda loader, node: Override(
        loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    ),
)
_OverlayLoader.add_constructor("!reset", lambda loader, node: Reset())


def _plain(value: Any) -> Any:
    """value with its merge tags dropped, as the schema reads it."""
    if isinstance(value, Override):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def overlay() -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(SCALE.read_text(), Loader=_OverlayLoader)
    return data


def _mount_target(volume: Any) -> Any:
    if isinstance(volume, dict):
        return volume["target"]
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _merge(base: Any, over: Any, path: tuple[str, ...]) -> Any:
    """Compose's merge of one file onto another (its specification's rules, for what
    these files use): mappings merge, most sequences append, command, entrypoint and a
    healthcheck's test are replaced, volumes are unique by target, and tags win."""
    if isinstance(over, Override):
        return _plain(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in base:
                merged[key] = _merge(base[key], value, (*path, key))
            else:
                merged[key] = _plain(value)
        return merged
    if isinstance(base, list) and isinstance(over, list):
        if path[-1] in ("command", "entrypoint") or path[-2:] == ("healthcheck", "test"):
            return _plain(over)
        if len(path) == 3 and path[0] == "services" and path[2] == "volumes":
            replaced = {_mount_target(v) for v in over}
            return [v for v in base if _mount_target(v) not in replaced] + _plain(over)
        return base + _plain(over)
    return _plain(over)


def merged() -> dict[str, Any]:
    """What `docker compose -f docker-compose.yml -f docker-compose.scale.yml` runs."""
    result: dict[str, Any] = _merge(compose(), overlay(), ())
    return result


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    # env.text("NAME", ...) and the like, grpcclient's addresses(env, "NAME", ...) and
    # metrics' metrics_port(env, "NAME").
    pattern = re.compile(r'(?:env\.\w+\(|(?:addresses|metrics_port)\(env,)\s*"([A-Z_]+)"')
    # Each service's config.py, and the readers they share in common/ (TLS).
    for config in [*ROOT.glob("*/config.py"), *ROOT.glob("common/*.py")]:
        names |= {f"IMAGESVC_{m}" for m in pattern.findall(config.read_text())}
    return names


# The launcher (`python -m launcher`), run as `make run` runs it.


def launcher_env(data: Path) -> dict[str, str]:
    """The environment of a launcher on free loopback ports, keeping its data in data."""
    gateway, cache, processor = free_port(), free_port(), free_port()
    return {
        **os.environ,
        "IMAGESVC_DATA_DIR": str(data),
        "IMAGESVC_GATEWAY_PORT": str(gateway),
        "IMAGESVC_CACHE_LISTEN": f"127.0.0.1:{cache}",
        "IMAGESVC_CACHE_ADDRESS": f"127.0.0.1:{cache}",
        "IMAGESVC_PROCESSOR_LISTEN": f"127.0.0.1:{processor}",
        "IMAGESVC_PROCESSOR_ADDRESSES": f"127.0.0.1:{processor}",
    }


def free_replica_port(replicas: int) -> int:
    """A port free on loopback, as are those of its replicas' (PORT_STRIDE apart)."""
    while True:
        port = free_port()
        try:
            for i in range(1, replicas):
                ports.bind("127.0.0.1", port + PORT_STRIDE * i).close()
        except OSError:
            continue
        return port


def replicas_env(data: Path, replicas: int) -> dict[str, str]:
    """The environment of a launcher whose services have up to `replicas` replicas each,
    on free loopback ports, keeping its data in data; the services find each other."""
    gateway, cache, processor = (free_replica_port(replicas) for _ in range(3))
    return {
        **os.environ,
        "IMAGESVC_DATA_DIR": str(data),
        "IMAGESVC_GATEWAY_PORT": str(gateway),
        "IMAGESVC_CACHE_LISTEN": f"127.0.0.1:{cache}",
        "IMAGESVC_PROCESSOR_LISTEN": f"127.0.0.1:{processor}",
    }


@contextmanager
def launched(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m launcher` with env (and args), its output (and its services') in log;
    stopped at the end if still running (a failed test leaves no services behind)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher", *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                for pid in children_of(proc.pid).values():
                    os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait()


def refused(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """Run `python -m launcher *args` to its end (one that refuses to start): its exit
    code, and the lines it printed on stdout and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    return result.returncode, (result.stdout + result.stderr).decode().strip().splitlines()


def wait_for_launcher(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll condition while the launcher runs; fail if it exits or 120 s pass first."""
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"the launcher exited before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} after 120 s:\n{log.read_text()}"
        time.sleep(0.1)


def children_of(pid: int) -> dict[str, int]:
    """The live `python -m SERVICE` children of process pid, by service (from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"-m" in argv[:-1]:
            found[argv[argv.index(b"-m") + 1].decode()] = int(stat.parent.name)
    return found


# Tokens made by hand.


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token made by hand, as an attacker would: HMAC-signed with key, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


# Small images in memory, and the render pipeline in-process.


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def marked(size: tuple[int, int] = (300, 200)) -> Image.Image:
    """Grey with a red block in the top-left corner."""
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, size[0] // 5, size[1] // 5))
    return image


def corner(image: Image.Image) -> str:
    """Which corner holds the red mark: tl, tr, bl or br."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    points = {"tl": (2, 2), "tr": (w - 3, 2), "bl": (2, h - 3), "br": (w - 3, h - 3)}
    reds = [name for name, xy in points.items() if rgb.getpixel(xy)[0] > 200]  # type: ignore[index]
    assert len(reds) == 1, reds
    return reds[0]


def limits_of(max_pixels: int, max_output_dimension: int) -> pipeline.RenderLimits:
    return pipeline.RenderLimits(
        max_pixels, 1000, max_output_dimension, max_total_pixels=500_000_000
    )


LIMITS = limits_of(50_000_000, 8192)
SPEC_LIMITS = spec.RequestLimits(max_output_dimension=8192, max_blur_sigma=50)


def wanted(*ops: ppb.Operation, **output: object) -> spec.Spec:
    return spec.parse(list(ops), ppb.OutputOptions(**output), SPEC_LIMITS)  # type: ignore[arg-type]


def animation(size: tuple[int, int], frames: int) -> bytes:
    """A GIF whose frames differ (each a different grey), so none is merged away."""
    images = [Image.new("L", size, 20 * n % 256) for n in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=40)


# Faces in the corpus.

ASTRONAUT = CORPUS / "faces" / "astronaut.png"
# A still life (a mirror, leaves, berries on stone): a real photograph with no one in it.
STILL_LIFE = CORPUS / "pillow" / "xmp_test.jpg"


def inside(face: faces.Box, corner: tuple[int, int], box: tuple[int, int]) -> bool:
    x, y, w, h = face
    return (
        corner[0] <= x
        and corner[1] <= y
        and x + w <= corner[0] + box[0]
        and y + h <= corner[1] + box[1]
    )


def expected_reasons(f: CorpusFile) -> set[str]:
    """What a refusal may say, from the manifest; the service itself decides by decoding."""
    if f.format not in ("-", *DEFAULT_FORMATS):
        return {Reason.UNSUPPORTED_MEDIA_TYPE}
    reasons = {
        "corrupt": {Reason.CORRUPT_IMAGE},
        "bomb": {Reason.IMAGE_TOO_LARGE},
        "unsupported": {Reason.UNSUPPORTED_MEDIA_TYPE},
    }[f.expected]
    if "DISAGREES" in f.note:
        reasons = reasons | {Reason.CORRUPT_IMAGE}
    return {str(r) for r in reasons}


def get_variant(stub: pb_grpc.CacheServiceStub, image_id: str, key: str) -> bytes | None:
    """The variant's bytes; None for a miss, or for an image that is gone."""
    body = bytearray()
    try:
        for message in stub.GetVariant(pb.GetVariantRequest(image_id=image_id, key=key)):
            kind = message.WhichOneof("payload")
            if kind == "miss":
                return None
            if kind == "variant":
                assert message.variant.key == key
            else:
                body += message.chunk
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    return bytes(body)


# API keys: two users and an admin.

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"
OPS = "ops-key-0123456789abc"
KEYS = f"alice:{ALICE},bob:{BOB},ops:{OPS}:admin"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
