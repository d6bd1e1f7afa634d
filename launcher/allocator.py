"""The C allocator settings the services may run with, and the one they do.

glibc's malloc makes up to 8 arenas per core, one for each thread that allocates while
another holds an arena (gRPC's, Pillow's and the decoders' threads), and gives little of
a fragmented arena back. MALLOC_ARENA_MAX caps them. jemalloc (Debian's libjemalloc2)
replaces malloc for the whole process when preloaded; the dynamic linker finds it by name.
`make soak` measures each (`--allocator`); the figures are in docs/performance.md.
"""

from __future__ import annotations

ALLOCATORS: dict[str, dict[str, str]] = {
    "glibc": {},
    "arena2": {"MALLOC_ARENA_MAX": "2"},
    "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2"},
}
# Every service's memory was flat over 20k requests with each; two arenas gave the least
# resident memory, and need no library beyond the C library. The Dockerfile sets the same.
CHOSEN = "arena2"


def defaults(environ: dict[str, str]) -> dict[str, str]:
    """The chosen setting's variables that environ does not set itself."""
    return {k: v for k, v in ALLOCATORS[CHOSEN].items() if k not in environ}
