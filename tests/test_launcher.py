"""`make run`'s launcher: ports checked first, all three services up and healthy and quiet,
a crashed one restarted (a crash loop given up), `make stop`, then a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, png_bytes


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


@contextmanager
def launched(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m launcher` with env, its output (and its services') in log; stopped at
    the end if still running (a failed test leaves no services behind)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher"], cwd=ROOT, env=env, stdout=out, stderr=out
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


def wait_for(
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
        wait_for(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
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
        second = subprocess.run(
            [sys.executable, "-m", "launcher"],
            cwd=ROOT,
            env=launcher_env(tmp_path / "data"),
            capture_output=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert f"already running (pid {proc.pid})" in second.stdout.decode()
        assert (tmp_path / "data" / "launcher.pid").read_text() == str(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    text = log.read_text()
    assert text.count('"msg": "stopped"') == 2  # both gRPC services, gracefully
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
        result = subprocess.run(
            [sys.executable, "-m", "launcher"], cwd=ROOT, env=env, capture_output=True, timeout=120
        )
    said = (result.stdout + result.stderr).decode().strip().splitlines()
    assert said == [f"imageservice: cannot listen on 127.0.0.1:{port} ({variable}): address in use"]
    assert result.returncode == 1


def test_a_crashed_service_is_restarted_while_the_others_keep_serving(tmp_path: Path) -> None:
    env = launcher_env(tmp_path / "data")
    log = tmp_path / "run.log"
    with launched(env, log) as proc:
        wait_for(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
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
            wait_for(
                lambda: (
                    children_of(proc.pid).get("processor", before["processor"])
                    != before["processor"]
                ),
                "a new processor",
                proc,
                log,
            )
            # A variant never asked for, so the new processor makes it.
            wait_for(
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
        wait_for(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
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
