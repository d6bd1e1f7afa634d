"""This process's id, without a system call each time it is asked.

os.getpid() is a system call (glibc stopped caching it), and the gateway asks on every
request: once for the access line, and once per metric value written in
prometheus_client's multiprocess mode. The id is read at import and again after a fork.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """This process's id."""
    return _pid
