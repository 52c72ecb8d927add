"""``convert`` at its edges (issue 13): nothing of the source lost, usage errors, messages.

Every case runs the real CLI on a real OCI layout (``oci_builder``) and checks
the exit code, the one stderr line, and what was (not) written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.oci_builder import Image, archive_layout, build_layout, tar_tree
from tests.processor import run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="converting keeps owners: needs root")


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) and its SHA-256: the source, intact."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths
    }


def _one_line(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    assert proc.returncode == code, proc.stderr.decode()
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("erofs-stream-processor: "), lines
    assert proc.stdout == b""
    return lines[0]


@pytest.fixture(scope="module")
def small_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tree = tmp_path_factory.mktemp("tree")
    (tree / "etc").mkdir()
    (tree / "etc" / "hello").write_text("hello\n")
    (tree / "data").write_bytes(hashlib.sha256(b"x").digest() * 1000)
    return tar_tree(tree)


@pytest.fixture
def src(small_tar: bytes, tmp_path: Path) -> Path:
    return build_layout(tmp_path / "src", [Image([small_tar], "gzip")])


# ---------------------------------------------------------------- the source is never written


@pytest.mark.parametrize("where", ["same", "inside", "nested-inside", "same-archive"])
def test_destination_in_the_source_is_refused(where: str, src: Path, tmp_path: Path) -> None:
    if where == "same-archive":
        src = archive_layout(src, tmp_path / "src.tar")
        dst = src
    else:
        dst = {"same": src, "inside": src / "out", "nested-inside": src / "blobs" / "out"}[where]
    before = _files(src)
    proc = run_cli(["convert", str(src), str(dst)])
    line = _one_line(proc, 2)
    expected = "is the source" if dst == src else "is inside the source"
    assert expected in line and "write the converted image elsewhere" in line
    assert _files(src) == before
    assert not any(p.name.startswith(".") for p in src.parent.rglob("*converting*"))


def test_destination_through_a_symlink_to_the_source_is_refused(src: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(src)
    before = _files(src)
    proc = run_cli(["convert", str(src), str(tmp_path / "alias" / "out")])
    assert "is inside the source" in _one_line(proc, 2)
    assert _files(src) == before


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 MiB of random bytes in one tar layer: seconds of work at --level 19."""
    tree = tmp_path_factory.mktemp("slow-tree")
    (tree / "random").write_bytes(os.urandom(16 << 20))
    return build_layout(tmp_path_factory.mktemp("slow") / "src", [Image([tar_tree(tree)], "none")])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_removes_the_staging_directory(
    signum: int, slow_source: Path, tmp_path: Path
) -> None:
    before = _files(slow_source)
    out = tmp_path / "out"
    command = ["convert", str(slow_source), str(out), "--level", "19", "--jobs", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_processor", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".out.converting-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert os.listdir(tmp_path) == []  # no staging directory, no DST
    assert _files(slow_source) == before


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--level", "99"], "--level 99 is out of range for zstd: use 1..22"),
        (
            ["--compression", "gzip", "--level", "12"],
            "--level 12 is out of range for gzip: use 0..9",
        ),
        (["--compression", "none", "--level", "3"], "--level does not apply to --compression none"),
        (["--jobs", "0"], "argument --jobs/-j: layers at once must be 1 or more"),
        (["--jobs", "many"], "argument --jobs/-j: layers at once must be 1 or more"),
        (["--chunk-size", "1KiB"], "chunk size '1KiB' is outside 4 KiB..64 MiB"),
        (["--max-layer-bytes", "0"], "size must be positive: '0'"),
    ],
)
def test_option_errors_name_the_valid_range(
    options: list[str], message: str, src: Path, tmp_path: Path
) -> None:
    proc = run_cli(["convert", str(src), str(tmp_path / "dst"), *options])
    assert message in _one_line(proc, 2)
    assert sorted(os.listdir(tmp_path)) == ["src"]


# ---------------------------------------------------------------- messages


def test_corrupt_blob_names_its_digest_once(src: Path, tmp_path: Path) -> None:
    index = json.loads((src / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((src / "blobs" / "sha256" / manifest_digest).read_text())
    digest = manifest["layers"][0]["digest"]
    blob = src / "blobs" / "sha256" / digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-12] ^= 0xFF  # inside the gzip trailer: decompresses, but the digest is wrong
    blob.write_bytes(bytes(data))
    line = _one_line(run_cli(["convert", str(src), str(tmp_path / "dst")]), 65)
    assert line.count(digest) == 1 and f"layer {digest} is corrupt" in line, line
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_rewrapping_says_what_it_did(src: Path, tmp_path: Path) -> None:
    first = tmp_path / "erofs"
    assert run_cli(["convert", str(src), str(first)]).returncode == 0
    proc = run_cli(["convert", str(first), str(tmp_path / "again")])
    assert proc.returncode == 0, proc.stderr.decode()
    [line] = proc.stderr.decode().splitlines()
    assert "1 EROFS re-wrapped (erofs " in line and "tar " not in line, line
    assert "rebuilt" not in line
    mixed = run_cli(["convert", str(src), str(tmp_path / "third")]).stderr.decode()
    assert "1 rebuilt from tar " in mixed and "re-wrapped" not in mixed


def test_a_tar_destination_is_an_archive(src: Path, tmp_path: Path) -> None:
    """``convert oci noarch.tar`` writes the oci-archive its name promises."""
    out = tmp_path / "noarch.tar"
    proc = run_cli(["convert", str(src), str(out)])
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.is_file()
    with tarfile.open(out) as tar:
        assert "index.json" in tar.getnames() and "oci-layout" in tar.getnames()
    # --no-archive keeps a directory of that name; --archive any name as a tar
    plain = tmp_path / "layout.tar"
    assert run_cli(["convert", str(src), str(plain), "--no-archive"]).returncode == 0
    assert (plain / "index.json").is_file()
    named = tmp_path / "image.oci"
    assert run_cli(["convert", str(src), str(named), "--archive"]).returncode == 0
    assert named.is_file()
    shutil.rmtree(plain)


def test_live_line_shows_each_phase_and_its_progress() -> None:
    """convert's live line once showed a frozen read count through the pack phase."""
    import io

    from stream_processor.convert.layers import PHASE_MKFS, PHASE_PACK, PHASE_READ
    from stream_processor.convert.progress import Progress

    out = io.StringIO()
    progress = Progress(out, 1, terminal=True)
    digest = "sha256:" + "ab" * 32
    progress.started(digest)
    progress.phase(digest, PHASE_READ, 0)
    assert out.getvalue().endswith("converting (0/1 done): abababababab reading tar 0 B")
    progress.phase(digest, PHASE_MKFS, 0)
    assert out.getvalue().endswith("abababababab mkfs.erofs")
    progress.phase(digest, PHASE_PACK, 8 << 20)
    progress.read(digest, 2 << 20)
    assert out.getvalue().endswith("abababababab packing 2 MiB of 8 MiB (25%)")
    quiet = io.StringIO()
    Progress(quiet, 1, terminal=False).phase(digest, PHASE_PACK, 1)
    assert quiet.getvalue() == ""
