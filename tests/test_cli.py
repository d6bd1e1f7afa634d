"""The `imagesvc` command against the real gateway, run in-process (main(argv)) and as a
subprocess (issue 15)."""

from __future__ import annotations

import importlib
import io
import json
import os
import secrets
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage

from common import ids
from imagesvc import PARAMETERS, cli
from tests.support import ROOT, ServiceProcess, free_port, png_bytes

OWNER_KEY = "cli-owner-key-0123456789"
WRITER_KEY = "cli-writer-key-0123456789"  # may upload, not list
SECRET = "C" * 32
API_KEYS = f"cliowner:{OWNER_KEY},cliwriter:{WRITER_KEY}:images:write"
SIGNING_KEYS = f"cli:{SECRET}"


@pytest.fixture(scope="module")
def gateway(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> ServiceProcess:
    """A gateway with an owner of the CLI's own (so its lists hold only its images) and
    URL signing."""
    env = {"IMAGESVC_API_KEYS": API_KEYS, "IMAGESVC_URL_SIGNING_KEYS": SIGNING_KEYS}
    return stack(env, processor=processor_server)


@pytest.fixture
def env(gateway: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """IMAGESVC_URL and IMAGESVC_TOKEN naming the gateway, here and for subprocesses."""
    monkeypatch.setenv("IMAGESVC_URL", gateway.url)
    monkeypatch.setenv("IMAGESVC_TOKEN", OWNER_KEY)
    monkeypatch.delenv("IMAGESVC_SIGNING_KEY", raising=False)
    return {"IMAGESVC_URL": gateway.url, "IMAGESVC_TOKEN": OWNER_KEY}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """imagesvc argv in this process: its exit code, stdout and stderr."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def command(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """imagesvc argv as a process of its own (python -m imagesvc, the console script's
    function)."""
    return subprocess.run(
        [sys.executable, "-m", "imagesvc", *argv],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def folder(root: Path, count: int, size: int = 64) -> Path:
    """count distinct PNGs in root (one in a subfolder), and a text file to leave alone."""
    (root / "sub").mkdir(parents=True)
    for i in range(count):
        where = root / "sub" if i == 0 else root
        (where / f"img{i}.png").write_bytes(png_bytes(size, size, noise=True))
    (root / "notes.txt").write_text("not an image")
    return root


def test_upload_a_folder_in_parallel_then_again_skips_every_file(
    tmp_path: Path, env: dict[str, str]
) -> None:
    photos = folder(tmp_path / "photos", 5)
    first = command("upload", str(photos), "-r", "-j", "2", env=env)
    assert first.returncode == 0, first.stderr
    assert "5 uploaded, 0 skipped (stored already), 0 failed, of 5 files" in first.stdout
    again = command("upload", str(photos), "-r", "-j", "2", "--json", env=env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["uploaded"], report["skipped"], report["failed"]) == (0, 5, 0)
    assert all(r["status"] == "skipped" and r["id"] for r in report["results"])
    # Without -r the subfolder is left out.
    top = command("upload", str(photos), "--json", env=env)
    assert len(json.loads(top.stdout)["results"]) == 4


def test_a_key_that_may_not_list_uploads_without_skipping(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    photos = folder(tmp_path / "photos", 2)
    for _ in range(2):
        report = run_json(capsys, "upload", str(photos), "-r", "--token", WRITER_KEY)
        assert (report["uploaded"], report["skipped"], report["failed"]) == (2, 0, 0)


def test_a_corrupt_file_fails_the_run_naming_it_with_its_reason(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(9, 9, noise=True))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    code, out, err = run(capsys, "upload", str(good), str(broken), str(tmp_path / "missing.png"))
    assert code == 1
    assert "1 uploaded, 0 skipped (stored already), 2 failed, of 3 files" in out
    lines = err.strip().splitlines()
    assert any(f"{broken}: 422 " in line for line in lines), err
    assert f"imagesvc: {tmp_path / 'missing.png'}: no such file or folder" in lines


def test_get_ls_info_rm(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "cat.png"
    source.write_bytes(png_bytes(120, 80, noise=True))
    made = run_json(capsys, "upload", str(source))
    assert isinstance(made, dict)
    image_id = made["results"][0]["id"]

    target = tmp_path / "thumb.webp"
    code, out, err = run(
        capsys, "get", image_id, "-o", str(target), "--w", "60", "--format", "webp"
    )
    assert code == 0, err
    with PILImage.open(target) as thumb:
        assert (thumb.size, thumb.format) == ((60, 40), "WEBP")
    got = run_json(
        capsys, "get", image_id, "-o", str(tmp_path / "g.png"), "--grayscale", "--h", "8"
    )
    assert got == {
        "path": str(tmp_path / "g.png"),
        "bytes": (tmp_path / "g.png").stat().st_size,
        "media_type": "image/png",
        "etag": got["etag"],
        "cache": "MISS",
    }
    code, out, err = run(capsys, "get", image_id, "-o", str(tmp_path / "o.png"))
    assert (tmp_path / "o.png").read_bytes() == source.read_bytes()
    piped = subprocess.run(
        [sys.executable, "-m", "imagesvc", "get", image_id, "-o", "-", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
    )
    assert piped.returncode == 0 and piped.stdout == source.read_bytes()  # the bytes alone

    listed = run_json(capsys, "ls", "--limit", "1")
    assert [i["id"] for i in listed] == [image_id]
    code, out, _ = run(capsys, "ls")
    assert out.splitlines()[0].startswith(f"{image_id}  ") and "cat.png" in out.splitlines()[0]
    sha = made["results"][0]["sha256"]
    assert [i["id"] for i in run_json(capsys, "ls", "--sha256", sha)] == [image_id]

    info = run_json(capsys, "info", image_id)
    assert isinstance(info, dict)
    assert (info["id"], info["width"], info["height"], info["filename"]) == (
        image_id,
        120,
        80,
        "cat.png",
    )
    code, out, _ = run(capsys, "info", image_id)
    assert "width:       120" in out

    code, out, err = run(capsys, "rm", image_id, "AAAAAAAAAAAAAAAAAAAAAA")
    assert code == 1 and f"deleted {image_id}" in out
    assert "imagesvc: AAAAAAAAAAAAAAAAAAAAAA: 404 Not found: no such image" in err
    code, out, err = run(capsys, "info", image_id)
    assert (code, out, err) == (1, "", "imagesvc: 404 Not found: no such image\n")


def test_url_sign_is_a_url_the_gateway_accepts(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str], gateway: ServiceProcess
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        made = http.post(
            "/images?visibility=private",
            content=png_bytes(30, 20, noise=True),
            headers={"Content-Type": "image/png", "Authorization": f"Bearer {OWNER_KEY}"},
        )
        image_id = made.json()["id"]
        code, out, err = run(capsys, "url", image_id, "--w", "15")
        assert code == 0, err
        assert out.strip() == f"{gateway.url}/images/{image_id}?w=15"
        assert http.get(out.strip()).status_code == 404  # private, unsigned
        # Signed by the gateway (the key may write), and here with the key itself.
        by_gateway = run_json(capsys, "url", image_id, "--w", "15", "--sign", "--expires", "10m")
        here = command(
            "url", image_id, "--w=15", "--sign", "--signing-key", f"cli:{SECRET}", "--json", env=env
        )
        assert here.returncode == 0, here.stderr
        for signed in (by_gateway, json.loads(here.stdout)):
            assert isinstance(signed, dict) and signed["expires"] > 0
            answer = http.get(signed["url"])
            assert answer.status_code == 200, answer.text
            with PILImage.open(io.BytesIO(answer.content)) as variant:
                assert variant.size == (15, 10)
        wrong = command(
            "url", image_id, "--sign", "--signing-key", f"cli:{'X' * 32}", env=env
        ).stdout.strip()
        assert http.get(wrong).json()["reason"] == "SIGNATURE_INVALID"


def test_presets_usage_and_unreachable(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_json(capsys, "presets") == {}
    code, _, err = run(capsys, "get", "AAAAAAAAAAAAAAAAAAAAAA", "--fit", "squash")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "url", "AAAAAAAAAAAAAAAAAAAAAA", "--sign", "--expires", "soon")
    assert code == 2
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    for argv in (("upload", ".", "-j", "0"), ("ls", "--limit", "0")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "1 or more" in err
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "--url", nowhere, "ls")
    assert code == 3 and err.startswith("imagesvc: cannot reach the gateway")
    code, _, err = run(capsys, "ls", "--token", "wrong-key-0123456789")
    assert code == 1 and err.startswith("imagesvc: 401 ")
    health = run_json(capsys, "health")
    assert isinstance(health, dict) and health["status"] == "ok"


def test_help_everywhere_names_the_exit_codes() -> None:
    for argv in ([], ["upload"], ["get"], ["ls"], ["info"], ["rm"], ["url"], ["presets"]):
        done = command(*argv, "--help", env={})
        assert done.returncode == 0, done.stderr
        assert "exit codes:" in done.stdout and "usage: imagesvc" in done.stdout
    get_help = command("get", "--help", env={}).stdout
    for name in PARAMETERS:
        assert f"--{name}" in get_help


def test_console_scripts_name_existing_functions() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"imagesvc", "imagesvc-cache", "imagesvc-processor", "imagesvc-gateway"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_the_readme_says_the_exit_codes() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## The command line\n")
    text = " ".join(readme[start : readme.index("\n## ", start + 1)].split())
    for code in ("0 everything done", "1 something failed", "2 a usage error", "3 the gateway"):
        assert code in text
    assert (cli.OK, cli.FAILED, cli.USAGE, cli.UNREACHABLE, cli.INTERRUPTED) == (0, 1, 2, 3, 130)


def test_a_new_image_id_never_looks_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 id in 64 used to start with "-", which argparse took for an option.
    draws = iter(["-" + "a" * 21, "-" + "b" * 21, "c" * 22])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(draws))
    assert ids.new_image_id() == "c" * 22
    monkeypatch.undo()
    assert not any(ids.new_image_id().startswith("-") for _ in range(2000))
