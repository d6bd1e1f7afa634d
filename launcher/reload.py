"""`--reload`: which services' code changed, as watchfiles (inotify) tells it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import watchfiles

SHARED = "common"  # code every service runs: a change there restarts them all


class CodeWatcher:
    """Watches root/<service>/ and root/common/ for changed Python files, in a thread of
    its own; changed() says which services have changed since it was last asked."""

    def __init__(self, root: Path, services: Sequence[str]) -> None:
        self._root = root
        self._services = tuple(services)
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="reload", daemon=True)
        self._thread.start()

    def changed(self) -> set[str]:
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        folders = [self._root / name for name in (*self._services, SHARED)]
        for changes in watchfiles.watch(
            *(f for f in folders if f.is_dir()),
            watch_filter=watchfiles.PythonFilter(),
            stop_event=self._stop,
            raise_interrupt=False,  # Ctrl-C is the launcher's to handle, in its thread
        ):
            touched = {Path(path).relative_to(self._root).parts[0] for _, path in changes}
            services = set(self._services) if SHARED in touched else touched
            with self._lock:
                self._changed |= services & set(self._services)
