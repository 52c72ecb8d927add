"""``inspect``: what a blob holds, for humans (table) and scripts (--json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stream_processor import seekable
from stream_processor.inspection import format_table, inspect_path
from stream_processor.mediatypes import Compression
from tests.conftest import FIXED_UUID, run_cli
from tests.test_seekable import CHUNK, assemble, pack_bytes, split


def inspect_json(blob: bytes, *extra: str) -> tuple[int, dict[str, Any], str]:
    proc = run_cli(["inspect", "--json", *extra, "-"], blob)
    data: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, data, proc.stderr.decode()


def test_chunked_blob(erofs_bytes: bytes) -> None:
    blob, result = pack_bytes(erofs_bytes)
    code, data, err = inspect_json(blob)
    assert code == 0, err
    count = seekable.chunk_count(len(erofs_bytes), CHUNK)
    assert data["compression"] == "zstd"
    assert data["blob_size"] == len(blob)
    assert data["decompressed_size"] == len(erofs_bytes)
    assert data["frame_count"] == count
    assert [f["decompressed_size"] for f in data["frames"]][:-1] == [CHUNK] * (count - 1)
    assert (
        sum(f["compressed_size"] for f in data["frames"]) == len(blob) - len(split(blob).table) - 8
    )
    table = data["chunk_table"]
    assert table["verified"] is True and table["error"] is None
    assert table["chunks"] == count and table["chunk_size"] == CHUNK and table["hash"] == "sha512"
    assert str(table["offset"]) == result.annotations[seekable.ANNOTATION_TABLE_OFFSET]
    assert table["digest"] == result.annotations[seekable.ANNOTATION_TABLE_DIGEST]
    assert data["skippable_frames"] == [
        {"offset": table["offset"], "size": len(split(blob).table), "content": "chunk table"}
    ]
    sb = data["erofs"]
    assert sb["valid"] is True
    assert sb["uuid"] == FIXED_UUID
    assert sb["block_size"] == 4096
    assert sb["image_size"] == len(erofs_bytes)
    assert "sb_csum" in sb["features"]
    assert sb["build_time"] == "2023-11-14T22:13:20Z"
    assert "Zstandard" in data["file"]["blob"]
    assert "EROFS filesystem" in data["file"]["image"]


@pytest.mark.parametrize(
    ("compression", "chunk", "word"),
    [
        (Compression.ZSTD, None, "Zstandard"),
        (Compression.GZIP, None, "gzip"),
        (Compression.NONE, None, "EROFS"),
    ],
)
def test_other_layouts(
    erofs_bytes: bytes, compression: Compression, chunk: int | None, word: str
) -> None:
    blob, _ = pack_bytes(erofs_bytes, compression=compression, chunk_size=chunk)
    code, data, err = inspect_json(blob, "--threads", "1")
    assert code == 0, err
    assert data["compression"] == compression.value
    assert data["chunk_table"] is None
    assert data["erofs"]["valid"] is True
    assert word in data["file"]["blob"]
    if compression is Compression.GZIP:
        assert data["gzip_members"] == 1
    if compression is Compression.ZSTD:
        assert data["frame_count"] == 1


def test_human_table(erofs_bytes: bytes, tmp_path: Path) -> None:
    blob, _ = pack_bytes(erofs_bytes)
    path = tmp_path / "layer.blob"
    path.write_bytes(blob)
    proc = run_cli(["inspect", str(path)])
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for line in ("zstd frames", "chunk table", "verifies           yes", "block size", FIXED_UUID):
        assert line in text
    assert text == format_table(inspect_path(str(path)))


def test_bad_table_is_described_and_exit_65(erofs_bytes: bytes) -> None:
    parts = split(pack_bytes(erofs_bytes)[0])
    table = bytearray(parts.table)
    table[23 + 2 * 72 + 8] ^= 1  # chunk 2's hash
    for threads in ("1", "2"):
        code, data, err = inspect_json(assemble(parts.frames, bytes(table)), "--threads", threads)
        assert code == 65
        assert data["chunk_table"]["verified"] is False
        assert "chunk 2" in data["chunk_table"]["error"]
        assert len(err.strip().splitlines()) == 1 and "chunk 2" in err


def test_dm_verity_frame_is_listed(erofs_bytes: bytes) -> None:
    parts = split(pack_bytes(erofs_bytes)[0])
    verity = seekable.skippable_frame(seekable.VERITY_SIGNATURE + bytes(504), magic=0x184D2A5E)
    other = seekable.skippable_frame(b"hello", magic=0x184D2A53)
    blob = assemble(parts.frames, parts.table) + verity + other
    code, data, _ = inspect_json(blob)
    assert code == 0
    contents = [s["content"] for s in data["skippable_frames"]]
    assert contents == ["chunk table", "dm-verity data", "unknown (magic 0x184d2a53)"]


def test_not_erofs_and_corrupt_streams(erofs_bytes: bytes) -> None:
    import zstandard

    code, data, err = inspect_json(zstandard.ZstdCompressor().compress(b"just text " * 500))
    assert code == 65 and data["erofs"] is None and "no EROFS image" in err
    blob, _ = pack_bytes(erofs_bytes)
    code, data, err = inspect_json(blob[: len(blob) // 2])
    assert code == 65 and "truncated" in data["error"]
    assert data["frame_count"] >= 1  # what was read is still described


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["inspect", str(tmp_path / "nope")])
    assert proc.returncode == 2 and b"no such file" in proc.stderr
