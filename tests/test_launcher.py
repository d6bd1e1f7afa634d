"""`make run`'s launcher: ports checked first, all three services up and healthy and quiet,
a crashed one restarted (a crash loop given up), `make stop`, then a clean stop; and
replicas of each service, each on its own port, sharing the work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from common import ports
from launcher.allocator import ALLOCATORS, CHOSEN
from launcher.plan import PORT_STRIDE, plan
from launcher.reload import CodeWatcher
from tests.support import (
    ROOT,
    children_of,
    free_replica_port,
    json_entries,
    launched,
    launcher_env,
    png_bytes,
    refused,
    replicas_env,
    wait_for_launcher,
)


def started(log: Path) -> dict[str, int]:
    """The pid of each replica's latest start, by its name, from the launcher's lines."""
    found = re.findall(r"^(\S+) started \(pid (\d+)\)$", log.read_text(), re.MULTILINE)
    return {name: int(pid) for name, pid in found}


def entries(log: Path) -> list[dict[str, object]]:
    """The services' JSON log lines."""
    text = log.read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def environ_of(pid: int) -> dict[str, str]:
    """The IMAGESVC_* variables process pid was started with."""
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(i.decode().split("=", 1) for i in items if i.startswith(b"IMAGESVC_"))


def rpc_pids(log: Path, method: str) -> set[object]:
    """The pids of the processes that served calls to gRPC methods containing method."""
    return {e["pid"] for e in entries(log) if e["msg"] == "rpc" and method in str(e.get("method"))}


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def another_program() -> Iterator[int]:
    """The port of another program, an HTTP server answering 200 to every GET (so it
    passes for a healthy gateway)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_launcher_starts_everything_quietly_and_stops_cleanly(tmp_path: Path) -> None:
    env = launcher_env(tmp_path / "data")
    # Moved listen addresses alone: the services find each other there all the same.
    del env["IMAGESVC_CACHE_ADDRESS"], env["IMAGESVC_PROCESSOR_ADDRESSES"]
    log = tmp_path / "run.log"
    url = f"http://127.0.0.1:{env['IMAGESVC_GATEWAY_PORT']}"
    with launched(env, log) as proc:
        wait_for_launcher(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
        assert f"imageservice is up: {url}".encode() in log.read_bytes()
        assert (tmp_path / "data" / "launcher.pid").read_text() == str(proc.pid)
        with httpx.Client(base_url=url) as http:
            assert http.get("/readyz").json()["status"] == "ok"
            created = http.post(
                "/images", content=png_bytes(8, 8), headers={"Content-Type": "image/png"}
            )
            assert created.status_code == 201
            assert http.get(f"{created.headers['location']}?w=4").status_code == 200
        # A second one on the same data folder is refused, whatever its ports.
        code, said = refused(launcher_env(tmp_path / "data"))
        assert code == 1
        assert any(f"already running (pid {proc.pid})" in line for line in said)
        assert (tmp_path / "data" / "launcher.pid").read_text() == str(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    text = log.read_text()
    stopped = [e for e in json_entries(text) if e["msg"] == "stopped"]
    assert len(stopped) == 2  # both gRPC services, gracefully
    assert "imageservice stopped" in text
    assert not (tmp_path / "data" / "launcher.pid").exists()
    with httpx.Client() as http, pytest.raises(httpx.TransportError):  # nothing answers
        http.get(f"{url}/healthz", timeout=1)
    # A clean start and stop is worth no warning from any service.
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [e for e in entries if e["level"] not in ("debug", "info")] == []


@pytest.mark.parametrize(
    "variable", ["IMAGESVC_GATEWAY_PORT", "IMAGESVC_CACHE_LISTEN", "IMAGESVC_PROCESSOR_LISTEN"]
)
def test_a_port_in_use_stops_the_launcher_before_it_starts_anything(
    variable: str, tmp_path: Path
) -> None:
    env = launcher_env(tmp_path / "data")
    with another_program() as port:
        env[variable] = str(port) if variable.endswith("_PORT") else f"127.0.0.1:{port}"
        code, said = refused(env)
    assert said == [f"imageservice: cannot listen on 127.0.0.1:{port} ({variable}): address in use"]
    assert code == 1


def test_a_crashed_service_is_restarted_while_the_others_keep_serving(tmp_path: Path) -> None:
    env = launcher_env(tmp_path / "data")
    log = tmp_path / "run.log"
    with launched(env, log) as proc:
        wait_for_launcher(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
        url = f"http://127.0.0.1:{env['IMAGESVC_GATEWAY_PORT']}"
        with httpx.Client(base_url=url, timeout=30) as http:
            png = png_bytes(16, 16, seed=12)
            image_id = http.post(
                "/images", content=png, headers={"Content-Type": "image/png"}
            ).json()["id"]
            assert http.get(f"/images/{image_id}?w=8").status_code == 200
            before = children_of(proc.pid)
            assert set(before) == {"cache", "processor", "gateway"}
            os.kill(before["processor"], signal.SIGKILL)
            # Originals need no processor: the gateway and the cache keep serving them.
            assert http.get(f"/images/{image_id}").content == png
            wait_for_launcher(
                lambda: (
                    children_of(proc.pid).get("processor", before["processor"])
                    != before["processor"]
                ),
                "a new processor",
                proc,
                log,
            )
            # A variant never asked for, so the new processor makes it.
            wait_for_launcher(
                lambda: http.get(f"/images/{image_id}?w=5").status_code == 200,
                "a variant from the new processor",
                proc,
                log,
            )
            after = children_of(proc.pid)
            assert (after["cache"], after["gateway"]) == (before["cache"], before["gateway"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    said = log.read_text()
    assert f"processor (pid {before['processor']}) was killed by SIGKILL; restarting it in" in said


def test_a_service_that_keeps_crashing_makes_the_launcher_give_up(tmp_path: Path) -> None:
    env = launcher_env(tmp_path / "data")
    # Passes the settings check, but the cache cannot make its folders: it fails every start.
    env["IMAGESVC_BLOB_URL"] = "file:///dev/null/blobs"
    log = tmp_path / "run.log"
    with launched(env, log) as proc:
        assert proc.wait(180) == 1
    said = log.read_text()
    assert "cache (pid" in said and "restarting it in" in said  # with backoff
    assert "cache crashed 5 times within 60 s (the last one exited with 1); giving up" in said
    assert "imageservice stopped" in said
    with httpx.Client() as http, pytest.raises(httpx.TransportError):  # the others stopped too
        http.get(f"http://127.0.0.1:{env['IMAGESVC_GATEWAY_PORT']}/healthz", timeout=5)


def test_make_stop_finds_what_make_run_started_with_the_same_settings(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"  # as with IMAGESVC_DATA_DIR=$HOME/images make run
    env = launcher_env(data)
    log = tmp_path / "run.log"
    with launched(env, log) as proc:
        wait_for_launcher(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
        stop = subprocess.run(
            ["make", "-s", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert "not running" not in stop.stdout
        assert stop.returncode == 0, stop.stdout + stop.stderr
        # make stop returns once everything has stopped.
        assert proc.poll() is not None or not (data / "launcher.pid").exists()
        assert proc.wait(60) == 0
    assert "stopped" in stop.stdout
    assert "imageservice stopped" in log.read_text()
    again = subprocess.run(
        ["make", "-s", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0
    assert "not running" in again.stdout and str(data / "launcher.pid") in again.stdout


def test_processor_and_gateway_replicas_share_the_work(tmp_path: Path) -> None:
    env = replicas_env(tmp_path / "data", 2)
    log = tmp_path / "run.log"
    gateway, cache = int(env["IMAGESVC_GATEWAY_PORT"]), env["IMAGESVC_CACHE_LISTEN"]
    processor = int(env["IMAGESVC_PROCESSOR_LISTEN"].rpartition(":")[2])
    urls = [f"http://127.0.0.1:{gateway}", f"http://127.0.0.1:{gateway + PORT_STRIDE}"]
    with launched(env, log, "--processor", "2", "--gateway", "2") as proc:
        wait_for_launcher(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
        assert f"imageservice is up: {urls[0]}, {urls[1]}  (Ctrl-C stops it)" in log.read_text()
        pids = started(log)
        assert list(pids) == ["cache", "processor-1", "processor-2", "gateway-1", "gateway-2"]
        # Every gateway is told of every processor, each on its own port.
        told = environ_of(pids["gateway-2"])
        assert told["IMAGESVC_PROCESSOR_ADDRESSES"] == (
            f"127.0.0.1:{processor},127.0.0.1:{processor + PORT_STRIDE}"
        )
        assert (told["IMAGESVC_CACHE_ADDRESS"], told["IMAGESVC_GATEWAY_PORT"]) == (
            cache,
            str(gateway + PORT_STRIDE),
        )
        with (
            httpx.Client(base_url=urls[0], timeout=30) as one,
            httpx.Client(base_url=urls[1], timeout=30) as two,
        ):
            png = png_bytes(64, 48, seed=21)
            created = one.post("/images", content=png, headers={"Content-Type": "image/png"})
            assert created.status_code == 201
            location = created.headers["location"]
            assert two.get(location).content == png
            for width in range(10, 18):  # new variants, so each is rendered by a processor
                assert (one if width % 2 else two).get(f"{location}?w={width}").status_code == 200
            processors = {pids["processor-1"], pids["processor-2"]}
            wait_for_launcher(
                lambda: rpc_pids(log, "ProcessorService/") == processors,
                "renders on both processors",
                proc,
                log,
            )
            # One processor gone: the calls it would have had go to the other (an
            # idempotent call that fails UNAVAILABLE is retried on another replica).
            os.kill(pids["processor-1"], signal.SIGKILL)
            for width in range(20, 28):
                assert (one if width % 2 else two).get(f"{location}?w={width}").status_code == 200
            wait_for_launcher(
                lambda: started(log)["processor-1"] != pids["processor-1"],
                "a new processor-1",
                proc,
                log,
            )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    said = log.read_text()
    assert (
        f"processor-1 (pid {pids['processor-1']}) was killed by SIGKILL; restarting it in" in said
    )
    stopped = [e for e in json_entries(said) if e["msg"] == "stopped"]
    assert len(stopped) == 3  # the cache and both processors, gracefully
    assert "imageservice stopped" in said


def test_several_caches_are_refused_without_postgresql(tmp_path: Path) -> None:
    env = replicas_env(tmp_path / "data", 2)
    code, said = refused(env, "--cache", "2")
    assert said == [
        "imageservice: bad configuration: --cache 2 needs "
        "IMAGESVC_METADATA_URL=postgresql://USER@HOST:PORT/DB (with SQLite, each replica "
        "hears only of its own deletes, so the others would go on serving deleted images)"
    ]
    assert code == 1
    assert not (tmp_path / "data").exists()  # nothing started, not even a pid file


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        (
            {"IMAGESVC_VARIANT_CACHE_URL": "memory:///srv/variants"},
            "--cache 3: IMAGESVC_VARIANT_CACHE_URL=memory:///srv/variants is one replica's "
            "own folder; leave it unset (each replica gets one in its data folder), or use "
            "memory:// or redis://",
        ),
        (
            {"IMAGESVC_PROCESSOR_LISTEN": "CACHE+20"},
            "IMAGESVC_CACHE_LISTEN + 20 and IMAGESVC_PROCESSOR_LISTEN both give port CACHE+20",
        ),
        ({"IMAGESVC_CACHE_LISTEN": "127.0.0.1:0"}, "IMAGESVC_CACHE_LISTEN gives 127.0.0.1:0: "),
        ({"IMAGESVC_CACHE_LISTEN": "127.0.0.1:65530"}, "IMAGESVC_CACHE_LISTEN + 10 passes"),
    ],
)
def test_cache_replicas_that_could_not_work_are_refused_before_anything_starts(
    setting: dict[str, str], refusal: str, tmp_path: Path
) -> None:
    env = {
        **replicas_env(tmp_path / "data", 3),
        # Never reached: the launcher refuses before any service would connect.
        "IMAGESVC_METADATA_URL": "postgresql://imagesvc@127.0.0.1:1/imagesvc",
    }
    cache = int(env["IMAGESVC_CACHE_LISTEN"].rpartition(":")[2])
    for name, value in setting.items():
        env[name] = value.replace("CACHE+20", f"127.0.0.1:{cache + 20}")
    refusal = refusal.replace("CACHE+20", str(cache + 20))
    code, said = refused(env, "--cache", "3")
    assert len(said) == 1 and said[0].startswith(f"imageservice: bad configuration: {refusal}")
    assert code == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("flag", "value"), [("--cache", "0"), ("--gateway", "17"), ("--processor", "two")]
)
def test_a_bad_replica_count_is_refused(flag: str, value: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "launcher", flag, value],
        cwd=ROOT,
        env=replicas_env(tmp_path / "data", 1),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"argument {flag}: takes 1 to 16 replicas, not '{value}'" in result.stderr.decode()
    assert result.stdout == b"" and not (tmp_path / "data").exists()


def test_a_replicas_port_in_use_stops_the_launcher_before_it_starts_anything(
    tmp_path: Path,
) -> None:
    env = replicas_env(tmp_path / "data", 1)
    with another_program() as port:
        # The second processor's port is the other program's; the first one's is free.
        ports.bind("127.0.0.1", port - PORT_STRIDE).close()
        env["IMAGESVC_PROCESSOR_LISTEN"] = f"127.0.0.1:{port - PORT_STRIDE}"
        code, said = refused(env, "--processor", "2")
    assert said == [
        f"imageservice: cannot listen on 127.0.0.1:{port} (IMAGESVC_PROCESSOR_LISTEN + 10): "
        "address in use"
    ]
    assert code == 1


def test_metrics_ports_count_up_by_replica_and_are_checked_before_anything_starts(
    tmp_path: Path,
) -> None:
    env = replicas_env(tmp_path / "data", 2)
    first = free_replica_port(2)
    env["IMAGESVC_PROCESSOR_METRICS_PORT"] = str(first)
    planned = plan(env, {"cache": 1, "processor": 2, "gateway": 1})
    given = [r.env["IMAGESVC_PROCESSOR_METRICS_PORT"] for r in planned if r.service == "processor"]
    assert given == [str(first), str(first + PORT_STRIDE)]
    assert "IMAGESVC_CACHE_METRICS_PORT" not in planned[0].env  # unset: no metrics port
    with another_program() as port:
        env["IMAGESVC_CACHE_METRICS_PORT"] = str(port)
        code, said = refused(env)
    assert said == [
        f"imageservice: cannot listen on 127.0.0.1:{port} (IMAGESVC_CACHE_METRICS_PORT): "
        "address in use"
    ]
    assert code == 1


def test_cache_replicas_on_postgresql_share_images_and_deletes(
    tmp_path: Path, postgres_url: str
) -> None:
    data = tmp_path / "data"
    env = {**replicas_env(data, 2), "IMAGESVC_METADATA_URL": postgres_url}
    log = tmp_path / "run.log"
    gateway = int(env["IMAGESVC_GATEWAY_PORT"])
    urls = [f"http://127.0.0.1:{gateway}", f"http://127.0.0.1:{gateway + PORT_STRIDE}"]
    with launched(env, log, "--cache", "2", "--processor", "2", "--gateway", "2") as proc:
        wait_for_launcher(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
        pids = started(log)
        assert set(pids) == {
            *(f"{service}-{i}" for service in ("cache", "processor", "gateway") for i in (1, 2))
        }
        # Each cache has a folder of its own; the blobs are in the one they share.
        for name in ("cache-1", "cache-2"):
            told = environ_of(pids[name])
            assert told["IMAGESVC_DATA_DIR"] == str(data / name)
            assert told["IMAGESVC_BLOB_URL"] == f"file://{data / 'blobs'}"
        with (
            httpx.Client(base_url=urls[0], timeout=30) as one,
            httpx.Client(base_url=urls[1], timeout=30) as two,
        ):
            images = {}
            for seed in range(4):  # round-robin: uploads to both caches
                png = png_bytes(32, 32, seed=100 + seed)
                created = one.post("/images", content=png, headers={"Content-Type": "image/png"})
                assert created.status_code == 201
                images[created.headers["location"]] = png
            for location, png in images.items():  # and reads from both
                assert two.get(location).content == png
                assert one.get(location).content == png
                assert two.get(f"{location}?w=16").status_code == 200
                assert one.get(f"{location}?w=16").status_code == 200
            caches = {pids["cache-1"], pids["cache-2"]}
            wait_for_launcher(
                lambda: (
                    rpc_pids(log, "CacheService/PutImage") | rpc_pids(log, "CacheService/GetImage")
                    == caches
                ),
                "uploads and reads on both caches",
                proc,
                log,
            )
            # Deleted through one gateway (and one cache), gone through the other at
            # once: the other gateway's hot cache held it, and heard of the delete.
            deleted, *kept = images
            assert two.delete(deleted).status_code == 204
            wait_for_launcher(
                lambda: (
                    one.get(deleted).status_code == 404
                    and one.get(f"{deleted}?w=16").status_code == 404
                ),
                "the delete seen through the other gateway",
                proc,
                log,
            )
            # One cache gone: reads go to the other, and so do new variants' calls.
            os.kill(pids["cache-1"], signal.SIGKILL)
            for location in kept:
                assert one.get(location).content == images[location]
                assert two.get(location).content == images[location]
                assert one.get(f"{location}?w=12").status_code == 200
                assert two.get(f"{location}?w=11").status_code == 200
            wait_for_launcher(
                lambda: started(log)["cache-1"] != pids["cache-1"], "a new cache-1", proc, log
            )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    assert "imageservice stopped" in log.read_text()


def test_reload_tells_which_services_code_changed(tmp_path: Path) -> None:
    for folder in ("cache", "processor", "gateway", "common"):
        (tmp_path / folder).mkdir()
    watcher = CodeWatcher(tmp_path, ("cache", "processor", "gateway"))

    def changed_after(path: Path) -> set[str]:
        # The watch starts in its thread: write until it reports something.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            path.write_text(f"x = {time.monotonic()}\n")
            time.sleep(0.2)
            changed = watcher.changed()
            while changed and time.monotonic() < deadline:
                time.sleep(2)  # changes to this path still in flight join the set
                more = watcher.changed()
                if not more:
                    return changed
                changed |= more
        raise AssertionError(f"no change reported for {path}")

    try:
        assert changed_after(tmp_path / "processor" / "spec.py") == {"processor"}
        assert changed_after(tmp_path / "gateway" / "app.py") == {"gateway"}
        assert changed_after(tmp_path / "common" / "env.py") == {"cache", "processor", "gateway"}
    finally:
        watcher.close()


def test_every_service_runs_with_the_chosen_allocator_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    counts = {"cache": 1, "processor": 2, "gateway": 1}
    environ = {"IMAGESVC_DATA_DIR": str(tmp_path)}
    chosen = ALLOCATORS[CHOSEN]
    assert chosen  # a setting, not glibc's defaults
    for replica in plan(environ, counts):
        assert chosen.items() <= replica.env.items(), replica.name
    mine = {**environ, "MALLOC_ARENA_MAX": "8"}
    assert {r.env.get("MALLOC_ARENA_MAX") for r in plan(mine, counts)} == {"8"}
