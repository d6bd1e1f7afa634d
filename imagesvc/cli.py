"""`imagesvc`: the image service from a shell, built on imagesvc.Client.

Exit codes: 0 everything done; 1 something failed (each failure named on stderr with
its reason: a file not uploaded, an image not found...); 2 a usage error; 3 the gateway
could not be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from imagesvc.client import Client, Image
from imagesvc.errors import Forbidden, ImageServiceError, ProblemError, ServiceUnreachable
from imagesvc.signing import Signer
from imagesvc.urls import PARAMETERS, PRESET
from processor.operations.base import Choice, Flag, Integer, Number

OK, FAILED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = """exit codes:
  0    everything done
  1    something failed (each failure is named on stderr, with its reason)
  2    usage error
  3    the gateway could not be reached
  130  interrupted"""
DEFAULT_URL = "http://127.0.0.1:8080"
GLOBAL_DEFAULTS: dict[str, Any] = {"url": None, "token": None, "json": False, "timeout": 60.0}
# What a folder's files are taken for (a file named on the command line always is).
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .webp .avif .tif .tiff .bmp .ico .mpo".split()  # noqa: SIM905
)
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "image/gif": ".gif",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "image/x-icon": ".ico",
    "image/vnd.microsoft.icon": ".ico",
}
_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Failed(Exception):
    """A command's failure, said in one line (exit code 1 unless code says otherwise)."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def reason(exc: BaseException) -> str:
    """One line from an error: the problem's status, title and detail."""
    if isinstance(exc, ProblemError):
        return exc.line()
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def positive(text: str) -> int:
    """A whole number of 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return int(text)


def duration(text: str) -> int:
    """Seconds from `90`, `90s`, `15m`, `1h`, `7d`."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration such as 90s, 15m, 1h or 7d")
    return int(match[1]) * _SECONDS[match[2]]


# Transformation options, one per declared parameter (processor.parameters.table).


def _add_transformations(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "transformation parameters (those of GET /images/{id}, see docs/http.md)"
    )
    for name, param in PARAMETERS.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kind = param.value
        options: dict[str, Any] = {"dest": f"param_{name}", "help": param.description}
        if isinstance(kind, Flag):
            options.update(action="store_const", const=True)
        elif isinstance(kind, Choice):
            options.update(choices=list(kind.options), metavar=name.upper())
            options["help"] += f" ({', '.join(kind.options)})"
        elif isinstance(kind, Integer):
            options.update(type=int, metavar="N")
        elif isinstance(kind, Number):
            options.update(type=float, metavar="X")
        else:
            options.update(metavar=name.upper())
            if _takes_bare(param.value):  # trim: alone, or with a value
                options.update(nargs="?", const=True)
        group.add_argument(*flags, **options)
    group.add_argument(f"--{PRESET}", dest=f"param_{PRESET}", help="a named transformation")


def _takes_bare(value: Any) -> bool:
    try:
        value.parse("")
    except ValueError:
        return False
    return True


def _transformation(args: argparse.Namespace) -> dict[str, Any]:
    """The transformation parameters the command line gave, in the table's order."""
    given = {}
    for name in (*PARAMETERS, PRESET):
        value = getattr(args, f"param_{name}", None)
        if value is not None:
            given[name] = value
    return given


# Output.


@dataclass
class Output:
    """Where results go: lines for people, or one JSON document for scripts."""

    json: bool
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)

    def say(self, text: str) -> None:
        if not self.json:
            print(text, file=self.out)

    def document(self, value: Any) -> None:
        if self.json:
            json.dump(value, self.out, indent=2, ensure_ascii=False)
            print(file=self.out)

    def warn(self, text: str) -> None:
        print(f"imagesvc: {text}", file=self.err)


# upload


@dataclass
class Result:
    path: str
    status: str  # uploaded, skipped or failed
    id: str | None = None
    reason: str | None = None
    sha256: str | None = None
    unreachable: bool = False

    def to_json(self) -> dict[str, Any]:
        body = {"path": self.path, "status": self.status, "id": self.id, "sha256": self.sha256}
        if self.reason is not None:
            body["reason"] = self.reason
        return body


def _files(paths: Sequence[str], recursive: bool) -> Iterator[tuple[str, Path | None, str]]:
    """(what to call it, the file or None, why not) for each file the paths name: a file
    as it is, a folder's image files (its subfolders' too with recursive)."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            for entry in sorted(found):
                hidden = any(part.startswith(".") for part in entry.relative_to(path).parts)
                if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES and not hidden:
                    yield str(entry), entry, ""
        elif path.is_file():
            yield given, path, ""
        elif path.exists():
            yield given, None, "not a regular file"
        else:
            yield given, None, "no such file or folder"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class Uploads:
    """Files uploaded N at a time, each skipped when the caller has its bytes already."""

    def __init__(self, client: Client, args: argparse.Namespace, progress: Progress) -> None:
        self.client = client
        self.args = args
        self.progress = progress
        self.lock = threading.Lock()
        self.claimed: dict[str, str] = {}  # sha256 → the path of this run that has it
        self.done = 0
        self.files = 0
        self.task: TaskID | None = None
        self.lookup = True  # whether the caller may look their images up by content

    def run(self, found: list[tuple[str, Path | None, str]]) -> list[Result]:
        results: list[Result] = []
        sizes = {name: path.stat().st_size for name, path, _ in found if path is not None}
        self.files = len(found)
        total = sum(sizes.values())
        self.task = self.progress.add_task("upload", total=total, files=f"0/{self.files} files")
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = [pool.submit(self.one, name, path, why) for name, path, why in found]
            for future in futures:
                results.append(future.result())
        return results

    def _count(self, more: int) -> None:
        assert self.task is not None
        with self.lock:
            self.done += more
            files = f"{self.done}/{self.files} files"
        self.progress.update(self.task, files=files)

    def _said(self, result: Result) -> Result:
        if not self.args.json:
            line = {
                "uploaded": f"uploaded {result.path} → {result.id}",
                "skipped": f"skipped  {result.path}: {result.reason}",
                "failed": f"failed   {result.path}: {result.reason}",
            }[result.status]
            self.progress.console.print(line, markup=False, highlight=False)
        self._count(1)
        return result

    def _stored(self, digest: str) -> list[Image]:
        """The caller's images of these bytes; none when the caller may not list (a key
        that may only write): then every file is uploaded."""
        if not self.lookup:
            return []
        try:
            return self.client.list(limit=1, sha256=digest).images
        except Forbidden:
            self.lookup = False
            return []

    def one(self, name: str, path: Path | None, why: str) -> Result:
        if path is None:
            return self._said(Result(name, "failed", reason=why))
        assert self.task is not None
        size = path.stat().st_size
        sent = 0

        def advance(now: int, total: int | None) -> None:
            nonlocal sent
            assert self.task is not None
            self.progress.advance(self.task, now - sent)
            sent = now

        try:
            digest = _sha256(path)
            if not self.args.force:
                with self.lock:
                    twin = self.claimed.get(digest)
                    if twin is None:
                        self.claimed[digest] = name
                if twin is not None:
                    self.progress.advance(self.task, size)
                    return self._said(
                        Result(name, "skipped", reason=f"the same bytes as {twin}", sha256=digest)
                    )
                stored = self._stored(digest)
                if stored:
                    self.progress.advance(self.task, size)
                    return self._said(
                        Result(
                            name,
                            "skipped",
                            id=stored[0].id,
                            reason=f"stored already as {stored[0].id}",
                            sha256=digest,
                        )
                    )
            image = self.client.upload(path, visibility=self.args.visibility, progress=advance)
        except (ImageServiceError, OSError) as exc:
            self.progress.advance(self.task, size - sent)
            result = Result(name, "failed", reason=reason(exc))
            result.unreachable = isinstance(exc, ServiceUnreachable)
            return self._said(result)
        self.progress.advance(self.task, size - sent)
        return self._said(Result(name, "uploaded", id=image.id, sha256=image.sha256))


def upload(client: Client, args: argparse.Namespace, output: Output) -> int:
    found = list(_files(args.paths, args.recursive))
    console = Console(file=output.err, stderr=True)
    progress = Progress(
        TextColumn("{task.fields[files]}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=output.json or not console.is_terminal,
        transient=True,
    )
    with progress:
        results = Uploads(client, args, progress).run(found)
    count = {kind: sum(r.status == kind for r in results) for kind in ("uploaded", "skipped")}
    failed = [r for r in results if r.status == "failed"]
    output.document({"results": [r.to_json() for r in results], **count, "failed": len(failed)})
    output.say(
        f"{count['uploaded']} uploaded, {count['skipped']} skipped (stored already), "
        f"{len(failed)} failed, of {len(results)} files"
    )
    for result in failed:
        output.warn(f"{result.path}: {result.reason}")
    if failed and all(r.unreachable for r in failed) and not count["uploaded"]:
        return UNREACHABLE
    return FAILED if failed else OK


# The other commands.


def _image_lines(image: Image) -> str:
    return (
        f"{image.id}  {image.created[:19].replace('T', ' ')}  {image.width}x{image.height}  "
        f"{image.format:<4}  {image.byte_size:>10}  {image.visibility:<7}  {image.filename}"
    )


def get(client: Client, args: argparse.Namespace, output: Output) -> int:
    variant = client.get(args.id, _transformation(args), accept=args.accept)
    kind = variant.media_type.split(";")[0].strip()
    target = args.output or f"{args.id}{EXTENSIONS.get(kind, '')}"
    if target == "-":
        sys.stdout.buffer.write(variant.content)
        sys.stdout.buffer.flush()
        return OK  # the bytes are the output (no JSON on the same stream)
    Path(target).write_bytes(variant.content)
    output.say(f"{target}: {len(variant.content)} bytes of {kind}")
    output.document(
        {
            "path": target,
            "bytes": len(variant.content),
            "media_type": kind,
            "etag": variant.etag,
            "cache": variant.cache,
        }
    )
    return OK


def ls(client: Client, args: argparse.Namespace, output: Output) -> int:
    images: list[Image] = []
    page_size = 100 if args.all else min(args.limit, 100)
    for image in client.iter_images(page_size=page_size, sha256=args.sha256):
        images.append(image)
        if not args.all and len(images) >= args.limit:
            break
    output.document([image.to_json() for image in images])
    for image in images:
        output.say(_image_lines(image))
    return OK


def info(client: Client, args: argparse.Namespace, output: Output) -> int:
    image = client.info(args.id)
    output.document(image.to_json())
    for name, value in image.to_json().items():
        output.say(f"{name + ':':<12} {'' if value is None else value}")
    return OK


def rm(client: Client, args: argparse.Namespace, output: Output) -> int:
    deleted, failed = [], []
    for image_id in args.ids:
        try:
            client.delete(image_id)
        except ServiceUnreachable:
            raise
        except ImageServiceError as exc:
            failed.append({"id": image_id, "reason": reason(exc)})
            output.warn(f"{image_id}: {reason(exc)}")
            continue
        deleted.append(image_id)
        output.say(f"deleted {image_id}")
    output.document({"deleted": deleted, "failed": failed})
    return FAILED if failed else OK


def url(client: Client, args: argparse.Namespace, output: Output) -> int:
    params = _transformation(args)
    expires: int | None = None
    if not args.sign:
        made = client.url(args.id, params)
    elif args.signing_key:
        try:
            signer = Signer.parse(args.signing_key)
        except ValueError as exc:
            raise Failed(f"--signing-key: {exc}", USAGE) from None
        expires = int(time.time()) + args.expires
        made = signer.sign(client.url(args.id, params), expires=expires)
    else:
        signed = client.signed_url(args.id, params, expires_in=args.expires)
        made, expires = signed.url, signed.expires
    output.document({"url": made, "expires": expires})
    output.say(made)
    return OK


def _spelled(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def presets(client: Client, args: argparse.Namespace, output: Output) -> int:
    named = client.presets()
    output.document(named)
    for name, values in named.items():
        spelled = " ".join(f"{k}={_spelled(v)}" for k, v in values.items())
        output.say(f"{name}: {spelled}")
    return OK


def health(client: Client, args: argparse.Namespace, output: Output) -> int:
    answer = client.ready()
    output.document(answer)
    output.say(json.dumps(answer))
    return OK if answer.get("status") == "ok" else FAILED


Command = Callable[[Client, argparse.Namespace, Output], int]


def parser() -> argparse.ArgumentParser:
    # The global options are taken before the command or after it (imagesvc ls --json).
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--url", help=f"the gateway's URL (default: $IMAGESVC_URL, else {DEFAULT_URL})"
    )
    common.add_argument(
        "--token", help="an API key or JWT, sent as a Bearer token (default: $IMAGESVC_TOKEN)"
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_argument("--timeout", type=float, help="seconds to wait per request (60)")
    top = argparse.ArgumentParser(
        prog="imagesvc",
        description="Upload, transform, list and share images of an image service.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
        allow_abbrev=False,
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Command, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
            allow_abbrev=False,
        )
        sub.set_defaults(run=run)
        return sub

    sub = command("upload", upload, "Upload files and folders, skipping those stored already.")
    sub.add_argument("paths", nargs="+", metavar="PATH", help="files, and folders of images")
    sub.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    sub.add_argument(
        "-j", "--jobs", type=positive, default=4, metavar="N", help="uploads at once (default 4)"
    )
    sub.add_argument(
        "--visibility", choices=["public", "private"], help="the images' (service default)"
    )
    sub.add_argument(
        "--force", action="store_true", help="upload even what is stored already (same bytes)"
    )

    sub = command("get", get, "Download an original, or a variant with parameters.")
    sub.add_argument("id", help="the image's id")
    sub.add_argument(
        "-o", "--output", metavar="FILE", help="where to write it (- for stdout; default ID.EXT)"
    )
    sub.add_argument("--accept", help="the Accept header (format=auto picks from it)")
    _add_transformations(sub)

    sub = command("ls", ls, "List your images, newest first.")
    sub.add_argument("--limit", type=positive, default=20, metavar="N", help="at most N (20)")
    sub.add_argument("--all", action="store_true", help="every one, however many")
    sub.add_argument("--sha256", metavar="HEX", help="only those of these bytes")

    sub = command("info", info, "Show an image's metadata.")
    sub.add_argument("id", help="the image's id")

    sub = command("rm", rm, "Delete images (and every variant of them).")
    sub.add_argument("ids", nargs="+", metavar="ID")

    sub = command("url", url, "Print the URL of an image or variant, signed with --sign.")
    sub.add_argument("id", help="the image's id")
    sub.add_argument(
        "--sign",
        action="store_true",
        help="signed: with --signing-key here, else by the gateway (your key needs "
        "images:write on the image)",
    )
    sub.add_argument(
        "--expires", type=duration, default=3600, metavar="DURATION", help="with --sign (1h)"
    )
    sub.add_argument(
        "--signing-key",
        metavar="KID:SECRET",
        default=os.environ.get("IMAGESVC_SIGNING_KEY"),
        help="sign here with this key of IMAGESVC_URL_SIGNING_KEYS "
        "(default: $IMAGESVC_SIGNING_KEY)",
    )
    _add_transformations(sub)

    command("presets", presets, "List the configured presets.")
    command("health", health, "Say whether the gateway and its services are ready.")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else USAGE
    for name, default in GLOBAL_DEFAULTS.items():  # given neither before nor after
        if not hasattr(args, name):
            setattr(args, name, default)
    output = Output(json=args.json)
    base = args.url or os.environ.get("IMAGESVC_URL") or DEFAULT_URL
    token = args.token or os.environ.get("IMAGESVC_TOKEN") or None
    run: Command = args.run
    try:
        with Client(base, token=token, timeout=args.timeout) as client:
            return run(client, args, output)
    except ServiceUnreachable as exc:
        output.warn(f"cannot reach the gateway: {exc}")
        return UNREACHABLE
    except (ImageServiceError, OSError) as exc:
        output.warn(reason(exc))
        return USAGE if isinstance(exc, ValueError) else FAILED
    except Failed as exc:
        output.warn(str(exc))
        return exc.code
    except KeyboardInterrupt:
        output.warn("interrupted")
        return INTERRUPTED


def run() -> None:
    """The console script."""
    sys.exit(main())
