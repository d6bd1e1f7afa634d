"""`python -m launcher [--reload]`: cache, processor and gateway, healthy, until Ctrl-C;
`python -m launcher stop`: stop the one started with the same settings.

What `make run` and `make dev` call. Checks that each service's address is free, starts
the three services on embedded defaults (data under ./data unless IMAGESVC_DATA_DIR
says otherwise), waits until the gateway's /readyz answers, prints the URL, and on
Ctrl-C or SIGTERM stops them in order (gateway, processor, cache), each gracefully. A
service that exits is started again (the others keep serving; gRPC reconnects), unless
it keeps crashing. With --reload, a change to a service's code (or to common/) restarts
that service.

The launcher's pid is in $IMAGESVC_DATA_DIR/launcher.pid while it runs: `stop` (what
`make stop` calls) finds it there, so it needs the same IMAGESVC_DATA_DIR, if any.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cache.config import Settings as CacheSettings
from cache.config import data_dir
from common import ports
from common.env import ConfigError, Env
from common.healthcheck import http_healthy
from gateway.config import Settings as GatewaySettings
from processor.config import Settings as ProcessorSettings

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("cache", "processor", "gateway")  # start order; stop in reverse
STARTUP_SECONDS = 60
# A service that exits is started again after a pause that doubles each time (0.5 s,
# 1, 2, 4...); this many exits of one service within the window is a crash loop.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
CRASH_LIMIT = 5
CRASH_WINDOW_SECONDS = 60.0
STOP_SECONDS = 90  # the services stop one after the other, each given 20 s at most


def _sources(service: str) -> dict[Path, float]:
    files = [*(ROOT / service).rglob("*.py"), *(ROOT / "common").rglob("*.py")]
    return {f: f.stat().st_mtime for f in files}


def _listen_addresses(env: Env) -> list[tuple[str, str, str | None]]:
    """Where each service will listen, with the variables that say so (the port's, then
    the host's where it has one); ConfigError for a bad value."""
    gateway = GatewaySettings.from_env(env)
    return [
        (f"{gateway.host}:{gateway.port}", "IMAGESVC_GATEWAY_PORT", "IMAGESVC_GATEWAY_HOST"),
        (CacheSettings.from_env(env).listen, "IMAGESVC_CACHE_LISTEN", None),
        (ProcessorSettings.from_env(env).listen, "IMAGESVC_PROCESSOR_LISTEN", None),
    ]


def _pidfile(env: Env) -> Path:
    return data_dir(env) / "launcher.pid"


def _launcher_of(pidfile: Path) -> int | None:
    """The pid of a launcher running on this data folder, if its pid file names one (a
    pid reused since by another program does not count)."""
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"launcher" in cmdline and pid != os.getpid() else None


def _reachable(listen: str) -> str:
    """Where a service listening on listen is reached from this machine."""
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "::", "") else listen


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop() -> int:
    """Stop the launcher that runs with this environment's IMAGESVC_DATA_DIR, and return
    once it has stopped its services (it removes its pid file last)."""
    pidfile = _pidfile(Env())
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        print(f"not running (no {pidfile}; started with another IMAGESVC_DATA_DIR? give it that)")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it was killed without a chance to clean up
        pidfile.unlink(missing_ok=True)
        print(f"not running (removed {pidfile}, left by pid {pid})")
        return 0
    print(f"stopping imageservice (pid {pid})", flush=True)
    deadline = time.monotonic() + STOP_SECONDS
    while pidfile.exists() and _running(pid):
        if time.monotonic() > deadline:
            print(f"pid {pid} has not stopped after {STOP_SECONDS} s", flush=True)
            return 1
        time.sleep(0.1)
    print("stopped", flush=True)
    return 0


def _ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:  # a real-time signal has no name
        return f"was killed by signal {-returncode}"


class Launcher:
    def __init__(self, reload: bool) -> None:
        self.reload = reload
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.crashes: dict[str, list[float]] = {s: [] for s in SERVICES}  # within the window
        self.restart_at: dict[str, float] = {}  # a crashed service's next start
        self.stopping = False
        # Absolute, so the services (which run in the checkout) and `stop` (run from
        # anywhere) read the same folder.
        self.env = {**os.environ, "IMAGESVC_DATA_DIR": str(data_dir(Env()))}
        host = self.env.get("IMAGESVC_GATEWAY_HOST", "127.0.0.1")
        port = self.env.get("IMAGESVC_GATEWAY_PORT", "8080")
        self.url = f"http://{host}:{port}"

    def start(self, service: str) -> None:
        # A session of its own: Ctrl-C reaches the launcher only, which then stops the
        # services in order instead of all at once.
        child = subprocess.Popen(
            [sys.executable, "-m", service], cwd=ROOT, env=self.env, start_new_session=True
        )
        self.children[service] = child
        print(f"{service} started (pid {child.pid})", flush=True)

    def stop(self, service: str) -> None:
        child = self.children.pop(service, None)
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def stop_all(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.stop_all)
        signal.signal(signal.SIGTERM, self.stop_all)
        # Before starting anything: a service that cannot listen would otherwise fail
        # among the others' output, and /readyz might be answered by whatever holds the
        # gateway's port.
        pidfile = _pidfile(Env(self.env))
        other = _launcher_of(pidfile)
        if other is not None:
            print(
                f"imageservice: already running (pid {other}) on {pidfile.parent}; "
                "`make stop` (with the same IMAGESVC_DATA_DIR) stops it",
                flush=True,
            )
            return 1
        try:
            addresses = _listen_addresses(Env(self.env))
            for address, variable, host_variable in addresses:
                ports.check(address, variable, host_variable)
        except ConfigError as exc:
            print(f"imageservice: bad configuration: {exc}", flush=True)
            return 1
        except ports.AddressUnavailable as exc:
            print(f"imageservice: {exc}", flush=True)
            return 1
        # The services find each other where they listen, unless told otherwise: moving
        # IMAGESVC_CACHE_LISTEN alone must not leave the others calling the old port.
        for (address, _, _), follows in zip(
            addresses[1:], ("IMAGESVC_CACHE_ADDRESS", "IMAGESVC_PROCESSOR_ADDRESSES"), strict=True
        ):
            if not self.env.get(follows, "").strip():
                self.env[follows] = _reachable(address)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(os.getpid()))
        try:
            for service in SERVICES:
                self.start(service)
            up = False
            deadline = time.monotonic() + STARTUP_SECONDS
            mtimes = {s: _sources(s) for s in SERVICES} if self.reload else {}
            while not self.stopping:
                if not self._restart_crashed():
                    return 1
                if not up:
                    if http_healthy(f"{self.url}/readyz"):
                        print(f"\nimageservice is up: {self.url}  (Ctrl-C stops it)\n", flush=True)
                        up = True
                    elif time.monotonic() > deadline:
                        print(f"not healthy after {STARTUP_SECONDS}s", flush=True)
                        return 1
                for service in mtimes:
                    now = _sources(service)
                    if now != mtimes[service]:
                        mtimes[service] = now
                        print(f"{service}: code changed, restarting", flush=True)
                        self.stop(service)
                        self.start(service)
                time.sleep(0.5 if up else 0.2)
            return 0
        finally:
            for service in reversed(SERVICES):
                self.stop(service)
            pidfile.unlink(missing_ok=True)
            print("imageservice stopped", flush=True)

    def _restart_crashed(self) -> bool:
        """Start again, after a backoff, each service that has exited; False when one has
        crashed CRASH_LIMIT times within CRASH_WINDOW_SECONDS (it will not get better)."""
        now = time.monotonic()
        for service in SERVICES:
            child = self.children.get(service)
            if child is not None and child.poll() is not None:
                del self.children[service]
                crashes = [t for t in self.crashes[service] if now - t < CRASH_WINDOW_SECONDS]
                self.crashes[service] = crashes = [*crashes, now]
                if len(crashes) >= CRASH_LIMIT:
                    print(
                        f"{service} crashed {len(crashes)} times within "
                        f"{CRASH_WINDOW_SECONDS:.0f} s (the last one {_ended(child.returncode)}); "
                        "giving up: its own lines above say why",
                        flush=True,
                    )
                    return False
                delay = min(FIRST_BACKOFF_SECONDS * 2 ** (len(crashes) - 1), MAX_BACKOFF_SECONDS)
                print(
                    f"{service} (pid {child.pid}) {_ended(child.returncode)}; "
                    f"restarting it in {delay:g} s",
                    flush=True,
                )
                self.restart_at[service] = now + delay
            if service in self.restart_at and now >= self.restart_at[service]:
                del self.restart_at[service]
                self.start(service)
        return True


def main(args: list[str]) -> int:
    if args == ["stop"]:
        return stop()
    if args not in ([], ["--reload"]):
        print("usage: python -m launcher [--reload] | python -m launcher stop", file=sys.stderr)
        return 2
    return Launcher(reload=args == ["--reload"]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
