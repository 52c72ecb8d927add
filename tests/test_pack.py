"""``pack``: every layout round-trips through this decoder and the stock tools.

Inputs are real mkfs.erofs images (conftest) or directories built by pack
itself with mkfs.erofs; decoded images are checked with ``fsck.erofs``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from stream_processor import seekable
from stream_processor.errors import DataError, UsageError
from stream_processor.mediatypes import Compression
from stream_processor.pack import DEFAULT_CHUNK_SIZE, build_image, pack_image
from tests.conftest import FIXED_TIME, FIXED_UUID, make_tree, require_tool, run_cli
from tests.test_seekable import pack_bytes, split

LAYOUTS = {
    # name: (pack CLI options, media type, stock decoder command)
    "zstd-chunked": (
        ["--compression", "zstd", "--chunk-size", "16KiB"],
        "application/vnd.erofs.layer.v1+zstd",
        ["zstd", "-dc"],
    ),
    "zstd-plain": (
        ["--compression", "zstd", "--no-chunk-table"],
        "application/vnd.erofs.layer.v1+zstd",
        ["zstd", "-dc"],
    ),
    "gzip": (["--compression", "gzip"], "application/vnd.erofs.layer.v1+gzip", ["gzip", "-dc"]),
    "none": (["--compression", "none"], "application/vnd.erofs.layer.v1", ["cat"]),
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
    assert record["mediaType"] == media_type
    assert record["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert record["size"] == len(blob)
    assert record["diffID"] == "sha256:" + hashlib.sha256(erofs_bytes).hexdigest()
    assert record["imageSize"] == len(erofs_bytes)

    decoded = run_cli(["--media-type", media_type], blob)
    assert decoded.returncode == 0, decoded.stderr.decode()
    assert decoded.stdout == erofs_bytes
    stock_out = subprocess.run(stock, input=blob, capture_output=True, check=True).stdout
    assert stock_out == erofs_bytes
    out_image = tmp_path / "decoded.erofs"
    out_image.write_bytes(decoded.stdout)
    fsck(out_image)
    if layout == "zstd-chunked":
        assert record["chunkSize"] == 16384
        annotations = record["annotations"]
        assert isinstance(annotations, dict)
        offset = int(annotations[seekable.ANNOTATION_TABLE_OFFSET])
        payload = split(blob).table
        assert blob[offset + 8 :] == payload
        assert annotations[seekable.ANNOTATION_TABLE_DIGEST] == (
            "sha512:" + hashlib.sha512(payload).hexdigest()
        )
    else:
        assert record["chunkSize"] is None and record["annotations"] == {}


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
    assert json.loads(proc.stdout)["diffID"] == "sha256:" + hashlib.sha256(erofs_bytes).hexdigest()
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
