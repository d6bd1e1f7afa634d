"""`python -m launcher [--reload] [--cache N] [--processor N] [--gateway N]`: the
services (N replicas of each, 1 by default), healthy, until Ctrl-C; `python -m launcher
stop`: stop the one started with the same settings.

What `make run` and `make dev` call. Checks that every replica's address is free, starts
the services on embedded defaults (data under ./data unless IMAGESVC_DATA_DIR says
otherwise), waits until every replica answers healthy, prints the gateways' URLs, and on
Ctrl-C or SIGTERM stops them in order (gateways, processors, caches), each gracefully. A
replica that exits is started again (the others keep serving; gRPC reconnects), unless
it keeps crashing. With --reload, a change to a service's code (or to common/) restarts
that service's replicas (launcher/reload.py, on watchfiles). Where replicas listen, and
what several caches need, is in launcher/plan.py.

The launcher's pid is in $IMAGESVC_DATA_DIR/launcher.pid while it runs: `stop` (what
`make stop` calls) finds it there, so it needs the same IMAGESVC_DATA_DIR, if any.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cache.config import data_dir
from common import ports
from common.env import ConfigError, Env
from common.healthcheck import grpc_healthy, http_healthy
from common.tls import Tls
from launcher.plan import MAX_REPLICAS, SERVICES, Replica, plan
from launcher.reload import CodeWatcher

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 60
# A service that exits is started again after a pause that doubles each time (0.5 s,
# 1, 2, 4...); this many exits of one service within the window is a crash loop.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
CRASH_LIMIT = 5
CRASH_WINDOW_SECONDS = 60.0
# The services stop one after the other (a service's replicas together), each given
# 20 s at most.
STOP_SECONDS = 90


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
    def __init__(self, reload: bool, counts: dict[str, int]) -> None:
        self.reload = reload
        self.counts = counts
        self.replicas: dict[str, Replica] = {}  # by name, in start order
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.crashes: dict[str, list[float]] = {}  # per replica, within the window
        self.restart_at: dict[str, float] = {}  # a crashed replica's next start
        self.stopping = False
        self.tls: Tls | None = None  # what the health checks present, as the services do

    def start(self, name: str) -> None:
        replica = self.replicas[name]
        # A session of its own: Ctrl-C reaches the launcher only, which then stops the
        # services in order instead of all at once.
        child = subprocess.Popen(
            [sys.executable, "-m", replica.service],
            cwd=ROOT,
            env=replica.env,
            start_new_session=True,
        )
        self.children[name] = child
        print(f"{name} started (pid {child.pid})", flush=True)

    def stop(self, *names: str) -> None:
        """Stop these replicas gracefully, all at once (each given 20 s at most)."""
        children = [self.children.pop(name, None) for name in names]
        running = [c for c in children if c is not None and c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in running:
            try:
                child.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def stop_all(self, *_: object) -> None:
        self.stopping = True

    def healthy(self) -> bool:
        """Every replica answers: the gateways' /readyz, the others' health service (so
        clients balance over all of them from the first call)."""
        return all(
            http_healthy(f"{r.url}/readyz")
            if r.service == "gateway"
            else grpc_healthy(r.reachable, self.tls, timeout=1.0)
            for r in self.replicas.values()
        )

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.stop_all)
        signal.signal(signal.SIGTERM, self.stop_all)
        # Before starting anything: a service that cannot listen would otherwise fail
        # among the others' output, and /readyz might be answered by whatever holds the
        # gateway's port.
        pidfile = _pidfile(Env())
        other = _launcher_of(pidfile)
        if other is not None:
            print(
                f"imageservice: already running (pid {other}) on {pidfile.parent}; "
                "`make stop` (with the same IMAGESVC_DATA_DIR) stops it",
                flush=True,
            )
            return 1
        try:
            replicas = plan(dict(os.environ), self.counts)
            self.tls = Tls.from_env()
            for r in replicas:
                ports.check(r.listen, r.variable, r.host_variable)
                if r.metrics is not None:
                    ports.check(r.metrics, r.metrics_variable)
        except ConfigError as exc:
            print(f"imageservice: bad configuration: {exc}", flush=True)
            return 1
        except ports.AddressUnavailable as exc:
            print(f"imageservice: {exc}", flush=True)
            return 1
        self.replicas = {r.name: r for r in replicas}
        self.crashes = {name: [] for name in self.replicas}
        urls = ", ".join(r.url for r in replicas if r.service == "gateway")
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(os.getpid()))
        watcher = CodeWatcher(ROOT, SERVICES) if self.reload else None
        try:
            for name in self.replicas:
                self.start(name)
            up = False
            deadline = time.monotonic() + STARTUP_SECONDS
            while not self.stopping:
                if not self._restart_crashed():
                    return 1
                if not up:
                    if self.healthy():
                        print(f"\nimageservice is up: {urls}  (Ctrl-C stops it)\n", flush=True)
                        up = True
                    elif time.monotonic() > deadline:
                        print(f"not healthy after {STARTUP_SECONDS}s", flush=True)
                        return 1
                changed = watcher.changed() if watcher else set()
                for service in [s for s in SERVICES if s in changed]:
                    print(f"{service}: code changed, restarting", flush=True)
                    for replica in replicas:
                        if replica.service == service:
                            self.stop(replica.name)
                            self.start(replica.name)
                time.sleep(0.5 if up else 0.2)
            return 0
        finally:
            if watcher:
                watcher.close()
            for service in reversed(SERVICES):
                self.stop(*(r.name for r in self.replicas.values() if r.service == service))
            pidfile.unlink(missing_ok=True)
            print("imageservice stopped", flush=True)

    def _restart_crashed(self) -> bool:
        """Start again, after a backoff, each replica that has exited; False when one has
        crashed CRASH_LIMIT times within CRASH_WINDOW_SECONDS (it will not get better)."""
        now = time.monotonic()
        for name in self.replicas:
            child = self.children.get(name)
            if child is not None and child.poll() is not None:
                del self.children[name]
                crashes = [t for t in self.crashes[name] if now - t < CRASH_WINDOW_SECONDS]
                self.crashes[name] = crashes = [*crashes, now]
                if len(crashes) >= CRASH_LIMIT:
                    print(
                        f"{name} crashed {len(crashes)} times within "
                        f"{CRASH_WINDOW_SECONDS:.0f} s (the last one {_ended(child.returncode)}); "
                        "giving up: its own lines above say why",
                        flush=True,
                    )
                    return False
                delay = min(FIRST_BACKOFF_SECONDS * 2 ** (len(crashes) - 1), MAX_BACKOFF_SECONDS)
                print(
                    f"{name} (pid {child.pid}) {_ended(child.returncode)}; "
                    f"restarting it in {delay:g} s",
                    flush=True,
                )
                self.restart_at[name] = now + delay
            if name in self.restart_at and now >= self.restart_at[name]:
                del self.restart_at[name]
                self.start(name)
        return True


def _replicas(text: str) -> int:
    """An --cache/--processor/--gateway value."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"takes 1 to {MAX_REPLICAS} replicas, not {text!r}")
    return count


def main(args: list[str]) -> int:
    if args == ["stop"]:
        return stop()
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Run the image service on this machine until Ctrl-C "
        "(`python -m launcher stop` stops it from elsewhere).",
    )
    parser.add_argument("--reload", action="store_true", help="restart a service on code changes")
    for service in SERVICES:
        parser.add_argument(
            f"--{service}",
            type=_replicas,
            default=1,
            metavar="N",
            help=f"replicas of the {service} (default 1)",
        )
    options = parser.parse_args(args)
    counts = {service: getattr(options, service) for service in SERVICES}
    return Launcher(reload=options.reload, counts=counts).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
