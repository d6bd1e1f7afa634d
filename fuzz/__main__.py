"""`python -m fuzz uploads|queries [libFuzzer options]`: one target under atheris.

Its corpus is .fuzz/<target>/ (seeded on the first run: the test corpus's images, or
example queries); what libFuzzer finds new is kept there, and a crash is written to
.fuzz/ as crash-<sha1>, which `python -m fuzz <target> .fuzz/crash-...` runs again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

TARGETS = ("uploads", "queries")
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".fuzz"


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz {{{','.join(TARGETS)}}} [libFuzzer options]")
    name, options = argv[1], argv[2:]
    # Coverage of our code and Pillow's Python plugins guides the search (the C decoders
    # are not built for it; their crashes still show).
    with atheris.instrument_imports(include=["PIL", "common", "cache", "gateway", "processor"]):
        if name == "uploads":
            from fuzz import uploads as target
        else:
            from fuzz import queries as target  # type: ignore[no-redef]
    corpus = WORK / name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed, data in target.seeds().items():
        path = corpus / seed
        if not path.exists():
            path.write_bytes(data)
    words = target.words()
    if words:
        dictionary = WORK / f"{name}.dict"
        dictionary.write_text("".join(f"{json.dumps(word)}\n" for word in words))
        options.append(f"-dict={dictionary}")
    reruns = [option for option in options if not option.startswith("-")]
    default = [] if reruns else [str(corpus)]
    atheris.Setup([argv[0], f"-artifact_prefix={WORK}/", *options, *default], target.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
