"""``pack``: every layout round-trips through this decoder and the stock tools.

Inputs are real mkfs.erofs images (conftest) or directories built by pack
itself with mkfs.erofs; decoded images are checked with ``fsck.erofs``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from stream_processor import seekable
from stream_processor.errors import DataError, UsageError
from stream_processor.mediatypes import (
    EROFS_LAYER,
    EROFS_LAYER_GZIP,
    EROFS_LAYER_ZSTD,
    Compression,
)
from stream_processor.pack import DEFAULT_CHUNK_SIZE, PackProgress, build_image, pack_image
from tests.builders import pack_bytes, split
from tests.conftest import (
    FIXED_TIME,
    FIXED_UUID,
    ROOT,
    make_tree,
    mkfs_erofs,
    require_tool,
)
from tests.processor import run_cli

LAYOUTS = {
    # name: (pack CLI options, media type, stock decoder command)
    "zstd-chunked": (
        ["--compression", "zstd", "--chunk-size", "16KiB"],
        EROFS_LAYER_ZSTD,
        ["zstd", "-dc"],
    ),
    "zstd-plain": (
        ["--compression", "zstd", "--no-chunk-table"],
        EROFS_LAYER_ZSTD,
        ["zstd", "-dc"],
    ),
    "gzip": (["--compression", "gzip"], EROFS_LAYER_GZIP, ["gzip", "-dc"]),
    "none": (["--compression", "none"], EROFS_LAYER, ["cat"]),
}


def fsck(image: Path) -> None:
    require_tool("fsck.erofs")
    proc = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def pack_cli(source: Path, output: Path, *options: str) -> dict[str, object]:
    proc = run_cli(["pack", str(source), "-o", str(output), "--json", *options])
    assert proc.returncode == 0, proc.stderr.decode()
    record: dict[str, object] = json.loads(proc.stdout)
    return record


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("input_kind", ["image", "directory"])
def test_round_trip(
    layout: str,
    input_kind: str,
    erofs_image: Path,
    erofs_bytes: bytes,
    sample_tree: Path,
    tmp_path: Path,
) -> None:
    options, media_type, stock = LAYOUTS[layout]
    blob_path = tmp_path / "layer.blob"
    if input_kind == "image":
        record = pack_cli(erofs_image, blob_path, *options)
    else:  # same mkfs.erofs options as the fixture: the same image, byte for byte
        record = pack_cli(
            sample_tree, blob_path, *options, "--uuid", FIXED_UUID, "--timestamp", FIXED_TIME
        )
    blob = blob_path.read_bytes()
    assert record["media_type"] == media_type
    assert record["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert record["size"] == len(blob)
    assert record["diff_id"] == "sha256:" + hashlib.sha256(erofs_bytes).hexdigest()
    assert record["image_size"] == len(erofs_bytes)

    decoded = run_cli(["--media-type", media_type], blob)
    assert decoded.returncode == 0, decoded.stderr.decode()
    assert decoded.stdout == erofs_bytes
    stock_out = subprocess.run(stock, input=blob, capture_output=True, check=True).stdout
    assert stock_out == erofs_bytes
    out_image = tmp_path / "decoded.erofs"
    out_image.write_bytes(decoded.stdout)
    fsck(out_image)
    if layout == "zstd-chunked":
        assert record["chunk_size"] == 16384
        annotations = record["annotations"]
        assert isinstance(annotations, dict)
        offset = int(annotations[seekable.ANNOTATION_TABLE_OFFSET])
        payload = split(blob).table
        assert blob[offset + 8 :] == payload
        assert annotations[seekable.ANNOTATION_TABLE_DIGEST] == (
            "sha512:" + hashlib.sha512(payload).hexdigest()
        )
    else:
        assert record["chunk_size"] is None and record["annotations"] == {}


def test_extracted_tree_matches_the_directory(tmp_path: Path) -> None:
    """Directory -> pack -> decode -> fsck.erofs --extract gives the files back."""
    tree = make_tree(tmp_path / "tree")
    blob_path = tmp_path / "layer.blob"
    pack_cli(tree, blob_path, "--chunk-size", "8KiB", "--threads", "2")
    decoded = run_cli(["--threads", "2"], blob_path.read_bytes())
    assert decoded.returncode == 0
    image = tmp_path / "image.erofs"
    image.write_bytes(decoded.stdout)
    out = tmp_path / "out"
    subprocess.run(["fsck.erofs", f"--extract={out}", str(image)], check=True, capture_output=True)
    for rel in ("etc/os-release", "usr/bin/tool", "usr/share/data/blob7.bin"):
        assert (out / rel).read_bytes() == (tree / rel).read_bytes()
    assert (out / "link").is_symlink()


def test_library_results_for_every_compression(erofs_bytes: bytes) -> None:
    diff_id = "sha256:" + hashlib.sha256(erofs_bytes).hexdigest()
    for compression, chunk in [
        (Compression.ZSTD, DEFAULT_CHUNK_SIZE),
        (Compression.ZSTD, None),
        (Compression.GZIP, DEFAULT_CHUNK_SIZE),  # ignored for gzip
        (Compression.NONE, None),
    ]:
        blob, result = pack_bytes(erofs_bytes, compression=compression, chunk_size=chunk)
        assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert result.size == len(blob)
        assert result.diff_id == diff_id
        assert result.image_size == len(erofs_bytes)
        chunked = compression is Compression.ZSTD and chunk is not None
        assert result.chunk_size == (chunk if chunked else None)
        assert bool(result.annotations) == chunked
    assert pack_bytes(erofs_bytes, compression=Compression.NONE)[0] == erofs_bytes


def test_threads_do_not_change_the_chunked_blob(erofs_bytes: bytes) -> None:
    one = pack_bytes(erofs_bytes, threads=1)[0]
    assert pack_bytes(erofs_bytes, threads=2)[0] == one
    assert pack_bytes(erofs_bytes, threads=3, level=1)[0] != one  # the level is honoured


@pytest.mark.parametrize(("level", "threads"), [(None, 1), (None, 2), (9, 1), (1, 2)])
def test_gzip_levels_and_threads(erofs_bytes: bytes, level: int | None, threads: int) -> None:
    blob, _ = pack_bytes(
        erofs_bytes, compression=Compression.GZIP, level=level, threads=threads, chunk_size=None
    )
    assert gzip.decompress(blob) == erofs_bytes


def test_plain_zstd_with_threads(erofs_bytes: bytes) -> None:
    blob, _ = pack_bytes(erofs_bytes, chunk_size=None, threads=2)
    out = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    assert out == erofs_bytes


def test_build_image_is_reproducible(sample_tree: Path, tmp_path: Path, erofs_bytes: bytes) -> None:
    a, b = tmp_path / "a.erofs", tmp_path / "b.erofs"
    build_image(sample_tree, a, uuid=FIXED_UUID, timestamp=int(FIXED_TIME))
    build_image(sample_tree, b, uuid=FIXED_UUID, timestamp=int(FIXED_TIME))
    assert a.read_bytes() == b.read_bytes() == erofs_bytes
    with pytest.raises(UsageError, match="not a directory"):
        build_image(tmp_path / "missing", tmp_path / "c.erofs")


def test_pack_to_stdout(erofs_image: Path, erofs_bytes: bytes) -> None:
    proc = run_cli(["pack", str(erofs_image), "-o", "-", "--json"])
    assert proc.returncode == 0
    record = json.loads(proc.stderr)
    assert record["digest"] == "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    assert run_cli([], proc.stdout).stdout == erofs_bytes


def test_human_summary_names_the_annotations(erofs_image: Path, tmp_path: Path) -> None:
    proc = run_cli(["pack", str(erofs_image), "-o", str(tmp_path / "x")])
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for word in ("digest", "diff id", "media type", seekable.ANNOTATION_TABLE_OFFSET):
        assert word in text


# -- bad input -------------------------------------------------------------------------


def _bad_images(erofs_bytes: bytes) -> dict[str, tuple[bytes, str]]:
    bad_sum = bytearray(erofs_bytes)
    bad_sum[1024 + 0x20] ^= 0xFF  # a field under the superblock checksum
    return {
        "random": (bytes(range(256)) * 64, "expected an EROFS image"),
        "empty": (b"", "the image is empty"),
        "truncated": (erofs_bytes[: len(erofs_bytes) // 2], "truncated EROFS image"),
        "short": (erofs_bytes[:1100], "too short"),
        "checksum": (bytes(bad_sum), "checksum mismatch"),
        "gzip": (gzip.compress(erofs_bytes), "expected an EROFS image"),
    }


@pytest.mark.parametrize("case", ["random", "empty", "truncated", "short", "checksum", "gzip"])
def test_bad_images_are_refused(case: str, erofs_bytes: bytes, tmp_path: Path) -> None:
    data, message = _bad_images(erofs_bytes)[case]
    with pytest.raises(DataError, match=message):
        pack_image(io.BytesIO(data), io.BytesIO(), compression=Compression.ZSTD)
    source = tmp_path / "in.img"
    source.write_bytes(data)
    output = tmp_path / "out.blob"
    proc = run_cli(["pack", str(source), "-o", str(output)])
    assert proc.returncode == 65
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.img"]  # no partial blob left


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--compression", "gzip", "--chunk-size", "1MiB"], "zstd only"),
        (["--no-chunk-table", "--chunk-size", "1MiB"], "exclude each other"),
        (["--chunk-size", "1KiB"], "outside"),
        (["--chunk-size", "lots"], "not a size"),
        (["--compression", "lz4"], "invalid choice"),
    ],
)
def test_bad_options_are_usage_errors(
    options: list[str], message: str, erofs_image: Path, tmp_path: Path
) -> None:
    proc = run_cli(["pack", str(erofs_image), "-o", str(tmp_path / "x"), *options])
    assert proc.returncode == 2
    assert message in proc.stderr.decode()
    assert not (tmp_path / "x").exists()


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["pack", str(tmp_path / "nope"), "-o", str(tmp_path / "x")])
    assert proc.returncode == 2 and b"no such file" in proc.stderr


def test_pack_from_stdin(erofs_bytes: bytes, tmp_path: Path) -> None:
    out = tmp_path / "x.blob"
    proc = run_cli(["pack", "-", "-o", str(out), "--json"], erofs_bytes)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["diff_id"] == "sha256:" + hashlib.sha256(erofs_bytes).hexdigest()
    assert run_cli([], out.read_bytes()).stdout == erofs_bytes


def test_unwritable_output_is_an_io_error(erofs_image: Path, tmp_path: Path) -> None:
    proc = run_cli(["pack", str(erofs_image), "-o", str(tmp_path / "missing-dir" / "x")])
    assert proc.returncode == 74
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_bytes_after_the_image_are_kept(erofs_bytes: bytes) -> None:
    """Like decode, pack accepts data after the image (e.g. a dm-verity tree) and keeps it."""
    image = erofs_bytes + b"appended" * 1000
    blob, result = pack_bytes(image)
    assert result.image_size == len(image)
    out = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    assert out == image


# -- issue 13: no data loss, usage errors, one surface ---------------------------------


def _cli(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """The CLI with stdin/stdout of the caller's choosing (files, for the same-file cases)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "stream_processor", *args],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        check=False,
        timeout=60,
        **kwargs,
    )


def _one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("erofs-stream-processor: ")
    return lines[0]


def test_output_that_is_a_fifo_is_written_in_place(erofs_image: Path, tmp_path: Path) -> None:
    """A device or FIFO (``-o /dev/null``, a pipe) is written to, never renamed over: a
    temporary renamed onto /dev/null replaced the device node with a regular file."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    proc = run_cli(["pack", str(erofs_image), "-o", str(fifo), "--json"])
    reader.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert fifo.is_fifo()  # still the FIFO, not a file renamed over it
    record = json.loads(proc.stdout)
    assert record["digest"] == "sha256:" + hashlib.sha256(got[0]).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary left


def test_output_that_is_a_symlink_stays_one(
    erofs_image: Path, erofs_bytes: bytes, tmp_path: Path
) -> None:
    """The file a symlink names is replaced; the link itself is kept."""
    target = tmp_path / "real" / "layer.zst"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "layer.zst"
    link.symlink_to(target)
    proc = run_cli(["pack", str(erofs_image), "-o", str(link)])
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == target
    assert run_cli([], target.read_bytes()).stdout == erofs_bytes
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".pack-")]


@pytest.mark.parametrize("how", ["same-name", "hard-link", "symlink", "stdin", "stdout"])
def test_output_that_is_the_input_is_refused(how: str, erofs_bytes: bytes, tmp_path: Path) -> None:
    image = tmp_path / "same.erofs"
    image.write_bytes(erofs_bytes)
    if how == "same-name":
        proc = _cli(["pack", str(image), "-o", str(image)])
    elif how == "hard-link":
        os.link(image, tmp_path / "hard.erofs")
        proc = _cli(["pack", str(image), "-o", str(tmp_path / "hard.erofs")])
    elif how == "symlink":
        (tmp_path / "link.erofs").symlink_to(image)
        proc = _cli(["pack", str(tmp_path / "link.erofs"), "-o", str(image)])
    elif how == "stdin":
        with image.open("rb") as stdin:
            proc = _cli(["pack", "-", "-o", str(image)], stdin=stdin)
    else:
        with image.open("ab") as stdout:
            proc = _cli(["pack", str(image), "-o", "-"], stdout=stdout)
    assert proc.returncode == 2
    assert "is the input" in _one_line(proc.stderr)
    assert image.read_bytes() == erofs_bytes  # input intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pack-")]


@pytest.fixture(scope="session")
def slow_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 MiB of random bytes in an image: pack --level 19 takes seconds on it."""
    tree = tmp_path_factory.mktemp("big-tree")
    (tree / "random").write_bytes(os.urandom(32 << 20))
    return mkfs_erofs(tree, tmp_path_factory.mktemp("big") / "big.erofs")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_leaves_no_file_behind(signum: int, slow_image: Path, tmp_path: Path) -> None:
    """README: "a failed pack leaves no file behind", also when stopped by a signal."""
    before = hashlib.sha256(slow_image.read_bytes()).hexdigest()
    target = tmp_path / "out.blob"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream_processor",
            "pack",
            str(slow_image),
            "-o",
            str(target),
            "--level",
            "19",
        ],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".pack-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "no temporary appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the compression
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, stderr
    assert list(tmp_path.iterdir()) == []  # neither the temporary nor the target
    assert hashlib.sha256(slow_image.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--level", "30"], "--level 30 is out of range for zstd: use 1..22"),
        (["--level", "0"], "--level 0 is out of range for zstd: use 1..22"),
        (
            ["--compression", "gzip", "--level", "12"],
            "--level 12 is out of range for gzip: use 0..9",
        ),
        (["--compression", "none", "--level", "1"], "--level does not apply to --compression none"),
        (["--chunk-size", "1000"], "chunk size '1000' is outside 4 KiB..64 MiB"),
        (["--chunk-size", "128MiB"], "chunk size '128MiB' is outside 4 KiB..64 MiB"),
        (["--threads", "0"], "thread count must be at least 1: '0'"),
        (["--threads", "x"], "not a thread count: 'x'"),
        (["--uuid", FIXED_UUID], "--uuid and --timestamp apply to a directory input only"),
        (["--timestamp", "5"], "--uuid and --timestamp apply to a directory input only"),
    ],
)
def test_option_errors_name_the_valid_range(
    options: list[str], message: str, erofs_image: Path, tmp_path: Path
) -> None:
    proc = run_cli(["pack", str(erofs_image), "-o", str(tmp_path / "x"), *options])
    assert proc.returncode == 2
    assert message in _one_line(proc.stderr)
    assert list(tmp_path.iterdir()) == []


def test_output_directory_is_a_usage_error(erofs_image: Path, tmp_path: Path) -> None:
    proc = run_cli(["pack", str(erofs_image), "-o", str(tmp_path)])
    assert proc.returncode == 2
    assert _one_line(proc.stderr).endswith("is a directory; -o takes the blob's file name")
    assert list(tmp_path.iterdir()) == []


def test_bad_uuid_is_refused_before_mkfs(sample_tree: Path, tmp_path: Path) -> None:
    proc = run_cli(["pack", str(sample_tree), "-o", str(tmp_path / "x"), "--uuid", "bad"])
    assert proc.returncode == 2
    assert "argument --uuid: not a UUID: 'bad'" in _one_line(proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("via", ["option", "environment"])
def test_mkfs_is_chosen_like_convert(via: str, sample_tree: Path, tmp_path: Path) -> None:
    bogus = str(tmp_path / "no-mkfs")
    args = ["pack", str(sample_tree), "-o", str(tmp_path / "x")]
    if via == "option":
        proc = run_cli([*args, "--mkfs", bogus])
    else:
        proc = run_cli(args, env={"EROFS_SP_MKFS": bogus})
    assert proc.returncode == 2
    assert _one_line(proc.stderr).endswith(f"{bogus} is not an executable mkfs.erofs")
    assert not (tmp_path / "x").exists()


def test_json_keys_are_snake_case(erofs_image: Path, tmp_path: Path) -> None:
    record = pack_cli(erofs_image, tmp_path / "x")
    assert list(record) == [
        "media_type",
        "digest",
        "size",
        "diff_id",
        "image_size",
        "chunk_size",
        "annotations",
    ]


def _extract(blob: Path, where: Path) -> Path:
    image = where.with_suffix(".erofs")
    image.write_bytes(run_cli([], blob.read_bytes()).stdout)
    fsck(image)
    subprocess.run(
        ["fsck.erofs", f"--extract={where}", str(image)], check=True, capture_output=True
    )
    return image


def test_directory_packs_reproducibly_keeping_mtimes(tmp_path: Path) -> None:
    require_tool("fsck.erofs")
    tree = make_tree(tmp_path / "tree")
    os.utime(tree / "etc", (1_600_000_000, 1_600_000_000))
    a, b = tmp_path / "a.blob", tmp_path / "b.blob"
    first = pack_cli(tree, a)
    time.sleep(1.1)  # a build time taken from the clock would differ now
    assert pack_cli(tree, b) == first
    assert a.read_bytes() == b.read_bytes()
    image = _extract(a, tmp_path / "out")
    assert int((tmp_path / "out" / "etc").stat().st_mtime) == 1_600_000_000
    uuid_a = superblock_uuid(image)
    # The UUID follows the content: another tree gets another one; --uuid wins.
    (tree / "extra").write_text("more\n")
    pack_cli(tree, tmp_path / "c.blob")
    assert superblock_uuid(_extract(tmp_path / "c.blob", tmp_path / "out-c")) != uuid_a
    pack_cli(tree, tmp_path / "d.blob", "--uuid", FIXED_UUID)
    assert superblock_uuid(_extract(tmp_path / "d.blob", tmp_path / "out-d")) == FIXED_UUID


def superblock_uuid(image: Path) -> str:
    return str(uuid.UUID(bytes=image.read_bytes()[1024 + 0x30 : 1024 + 0x40]))


def test_live_line_only_on_a_terminal(erofs_image: Path, tmp_path: Path) -> None:
    """Through the CLI stderr is a pipe: nothing but errors; the line itself below."""
    proc = run_cli(["pack", str(erofs_image), "-o", str(tmp_path / "x")])
    assert proc.returncode == 0 and proc.stderr == b""
    now = [0.0]
    out = io.StringIO()
    line = PackProgress(out, 4 << 20, terminal=True, clock=lambda: now[0])
    now[0] = 2.0
    line.update(2 << 20, 1 << 20)
    assert out.getvalue() == "\rpacking: read 2 MiB of 4 MiB (50%), wrote 1 MiB, 1 MiB/s\x1b[K"
    now[0] = 2.1
    line.update(3 << 20, 1 << 20)  # within REFRESH_S: not redrawn
    line.clear()
    assert out.getvalue().endswith("1 MiB/s\x1b[K\r\x1b[K")
    quiet = io.StringIO()
    PackProgress(quiet, None, terminal=False).update(1, 1)
    assert quiet.getvalue() == ""


def test_stdin_on_a_terminal_is_refused(tmp_path: Path) -> None:
    """``pack - -o X`` typed at a shell would wait silently for an image: say so instead."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = _cli(["pack", "-", "-o", str(tmp_path / "x")], stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert "refusing to read an image from a terminal" in _one_line(proc.stderr)
    assert list(tmp_path.iterdir()) == []


def test_live_line_on_a_real_terminal(slow_image: Path, tmp_path: Path) -> None:
    """stderr on a pty: the live line appears while packing (then Ctrl-C stops it cleanly)."""
    import pty
    import select

    master, slave = pty.openpty()
    command = ["pack", str(slow_image), "-o", str(tmp_path / "x"), "--level", "19"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_processor", *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"MiB/s" not in seen and b"KiB/s" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 4096)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        os.close(master)
    live = rb"\rpacking: read [\d.]+ [KM]iB of 32(\.\d)? MiB \(\d+%\), wrote "
    assert re.search(live, seen), seen
    assert proc.returncode == 128 + signal.SIGINT
    assert list(tmp_path.iterdir()) == []
