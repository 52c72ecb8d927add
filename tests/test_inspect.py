"""``inspect``: what a blob holds, for humans (table) and scripts (--json)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from stream_processor import dmverity, seekable
from stream_processor.inspection import format_table, inspect_path
from stream_processor.mediatypes import OCI_LAYER_TAR_ZSTD, Compression
from stream_processor.pack import PackResult
from tests.builders import CHUNK, assemble, pack_bytes, split
from tests.conftest import FIXED_UUID
from tests.processor import run_cli


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
    for line in ("zstd frames", "chunk table", "  verifies  ", "block size", FIXED_UUID):
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


def test_unknown_skippable_frame_is_listed(erofs_bytes: bytes) -> None:
    parts = split(pack_bytes(erofs_bytes)[0])
    other = seekable.skippable_frame(b"hello", magic=0x184D2A53)
    blob = assemble(parts.frames, parts.table) + other
    code, data, _ = inspect_json(blob)
    assert code == 0
    contents = [s["content"] for s in data["skippable_frames"]]
    assert contents == ["chunk table", "unknown (magic 0x184d2a53)"]


def test_not_erofs_and_corrupt_streams(erofs_bytes: bytes) -> None:
    import zstandard

    code, data, err = inspect_json(zstandard.ZstdCompressor().compress(b"just text " * 500))
    assert code == 65 and data["erofs"] is None and "expected an EROFS image" in err
    blob, _ = pack_bytes(erofs_bytes)
    code, data, err = inspect_json(blob[: len(blob) // 2])
    assert code == 65 and "truncated" in data["error"]
    assert data["frame_count"] >= 1  # what was read is still described


# -- issue 13's inspect items, and issue 11's dm-verity and descriptor checks ----------------


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


@pytest.mark.parametrize("threads", ["1", "2"])
def test_bit_flipped_blob_reports_what_it_read_then_the_error(
    erofs_bytes: bytes, tmp_path: Path, threads: str
) -> None:
    blob, _ = pack_bytes(erofs_bytes)
    parts = split(blob)
    flipped = bytearray(blob)
    flipped[len(parts.frames[0]) + len(parts.frames[1]) // 2] ^= 1  # inside frame 1
    code, data, err = inspect_json(bytes(flipped), "--threads", threads)
    assert code == 65
    line = _one_line(err)
    assert "frame at offset" in line and line.endswith(data["error"])
    assert -1 not in _walk(data)  # no placeholder sizes
    assert data["frames"][0] == {
        "offset": 0,
        "complete": True,
        "compressed_size": len(parts.frames[0]),
        "decompressed_size": CHUNK,
    }
    assert data["frames"][1]["complete"] is False
    decoded = data["decompressed_size"]  # frame 0, and with one thread part of frame 1
    assert data["diff_id"] is None and CHUNK <= decoded < len(erofs_bytes)
    assert data["erofs"]["superblock_valid"] is True and data["erofs"]["valid"] is False
    path = tmp_path / "flipped.blob"
    path.write_bytes(flipped)
    proc = run_cli(["inspect", "--threads", threads, str(path)])
    text = proc.stdout.decode()
    assert proc.returncode == 65
    assert not re.search(r"(^|[\s.(])-1\b", text)
    assert not re.search(r"^EROFS +valid", text, re.M)
    assert re.search(r"^diff id +\(none: the stream did not decode without error\)$", text, re.M)
    assert f"{decoded} of {len(erofs_bytes)} bytes decoded before the damage" in text
    assert re.search(r"frame 1 +offset \d+, damaged \(see error\)", text)
    assert text.splitlines()[-1].startswith("error")  # everything read first, then the error


def test_table_beyond_the_damage_is_not_called_none(erofs_bytes: bytes) -> None:
    blob, _ = pack_bytes(erofs_bytes)
    flipped = bytearray(blob)
    flipped[100] ^= 0xFF
    proc = run_cli(["inspect", "--threads", "1", "-"], bytes(flipped))
    assert proc.returncode == 65
    assert not re.search(r"^chunk table +none", proc.stdout.decode(), re.M)


def test_empty_input(tmp_path: Path) -> None:
    code, data, err = inspect_json(b"")
    assert code == 65 and data["error"] == "input is empty" and data["exit_code"] == 65
    assert _one_line(err).endswith("-: input is empty")
    proc = run_cli(["inspect", "/dev/null"])
    assert proc.returncode == 65
    assert _one_line(proc.stderr.decode()).endswith("/dev/null: input is empty")
    assert proc.stdout.decode().splitlines()[-1].split() == ["error", "input", "is", "empty"]


def test_missing_file_and_directory_are_usage_errors(tmp_path: Path) -> None:
    """The words ``pack`` uses for a missing input (errors.no_such_file), and a directory
    is said to be one."""
    missing = tmp_path / "nope"
    for cmd in (["inspect", str(missing)], ["pack", str(missing), "-o", str(tmp_path / "o")]):
        proc = run_cli(cmd)
        assert proc.returncode == 2 and proc.stdout == b""
        assert _one_line(proc.stderr.decode()) == (
            f"erofs-stream-processor: {missing}: no such file or directory"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    proc = run_cli(["inspect", str(tmp_path)])
    assert proc.returncode == 2 and proc.stdout == b""
    assert _one_line(proc.stderr.decode()) == (
        f"erofs-stream-processor: {tmp_path}: is a directory, not a layer blob"
    )


def test_json_failure_is_one_object_with_error_and_exit_code(
    erofs_bytes: bytes, tmp_path: Path
) -> None:
    """A blob that would not decode: the report is the one JSON object on stdout, and
    carries ``error`` and ``exit_code`` like every --json failure."""
    blob, _ = pack_bytes(erofs_bytes)
    code, data, err = inspect_json(blob[: len(blob) // 2])  # json.loads: exactly one object
    assert code == 65 and data["exit_code"] == 65
    assert _one_line(err) == f"erofs-stream-processor: -: {data['error']}"
    code, data, _ = inspect_json(blob)
    assert code == 0 and data["exit_code"] == 0 and data["error"] is None
    proc = run_cli(["inspect", "--json", str(tmp_path / "nope")])
    assert proc.returncode == 2
    line = f"{tmp_path / 'nope'}: no such file or directory"
    assert json.loads(proc.stdout) == {"error": line, "exit_code": 2}
    assert _one_line(proc.stderr.decode()) == f"erofs-stream-processor: {line}"
    proc = run_cli(["inspect", "--json", "--threads", "x", "-"], blob)  # a parse error
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {
        "error": _one_line(proc.stderr.decode()).removeprefix("erofs-stream-processor: "),
        "exit_code": 2,
    }


def test_blob_digest_and_diff_id(erofs_bytes: bytes) -> None:
    blob, result = pack_bytes(erofs_bytes)
    code, data, _ = inspect_json(blob)
    assert code == 0
    assert data["blob_digest"] == result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert data["diff_id"] == result.diff_id


def test_tar_layer_on_the_shared_route_is_valid(sample_tree: Path) -> None:
    import zstandard

    from tests.oci_builder import tar_tree

    blob = zstandard.ZstdCompressor().compress(tar_tree(sample_tree))
    for args, env in (
        (["--media-type", OCI_LAYER_TAR_ZSTD], {}),
        (["--media-type", "tar+zstd"], {}),  # the short name config --routes takes
        ([], {"STREAM_PROCESSOR_MEDIATYPE": OCI_LAYER_TAR_ZSTD}),
    ):
        proc = run_cli(["inspect", "--json", *args, "-"], blob, env=env)
        data = json.loads(proc.stdout)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
        assert data["payload"] == "tar" and data["erofs"] is None and data["error"] is None
        assert data["media_type"] == OCI_LAYER_TAR_ZSTD
    text = run_cli(["inspect", "--media-type", "tar+zstd", "-"], blob).stdout.decode()
    assert re.search(r"^payload +tar archive \(passed through unchanged", text, re.M)
    assert "would not decode" not in text and "error" not in text
    code, data, err = inspect_json(blob)  # detected, no media type: EROFS is expected
    assert code == 65 and "expected an EROFS image" in _one_line(err)
    proc = run_cli(["inspect", "--media-type", "bogus", "-"], blob)
    assert proc.returncode == 2 and proc.stdout == b""
    line = _one_line(proc.stderr.decode())
    assert "unsupported media type 'bogus'" in line and "tar+zstd" in line and "*" not in line


def test_uuid_in_both_byte_orders(erofs_bytes: bytes) -> None:
    blob, _ = pack_bytes(erofs_bytes)
    code, data, _ = inspect_json(blob)
    assert code == 0
    sb = data["erofs"]
    assert sb["uuid"] == FIXED_UUID
    # file(1) prints the same 16 bytes with the first three fields byte-swapped
    assert f"uuid={sb['uuid_file_order']}" in data["file"]["image"]
    assert sb["uuid_file_order"] != sb["uuid"].upper()
    text = run_cli(["inspect", "-"], blob).stdout.decode()
    assert "as blkid and mkfs.erofs -U print it" in text and "file(1) order" in text


def _verity_blob(erofs_bytes: bytes) -> tuple[bytes, PackResult]:
    return pack_bytes(erofs_bytes, dm_verity_block_size=4096)


def test_dm_verity_frame_is_shown_and_verified(erofs_bytes: bytes) -> None:
    blob, result = _verity_blob(erofs_bytes)
    code, data, err = inspect_json(blob)
    assert code == 0, err
    v = data["dm_verity"]
    assert str(v["offset"]) == result.annotations[seekable.ANNOTATION_VERITY_OFFSET]
    assert v["root_digest"] == result.annotations[seekable.ANNOTATION_VERITY_ROOT]
    assert v["verified"] is True and v["error"] is None
    assert v["data_block_size"] == v["hash_block_size"] == 4096 and v["hash"] == "sha512"
    assert v["salt"] == dmverity.derive_salt(erofs_bytes).hex()
    contents = [s["content"] for s in data["skippable_frames"]]
    assert contents == ["chunk table", "dm-verity data"]
    forged = bytearray(blob)
    forged[v["offset"] + 8 + 4096 + 3] ^= 1  # a byte of the tree
    code, data, err = inspect_json(bytes(forged))
    assert code == 65 and data["dm_verity"]["verified"] is False
    assert "dm-verity: hash tree level" in _one_line(err)


def _descriptor(blob: bytes, result: PackResult) -> dict[str, Any]:
    return {
        "mediaType": result.media_type,
        "digest": result.digest,
        "size": len(blob),
        "annotations": dict(result.annotations),
    }


def test_descriptor_matches(erofs_bytes: bytes, tmp_path: Path) -> None:
    blob, result = _verity_blob(erofs_bytes)
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps(_descriptor(blob, result)))
    code, data, err = inspect_json(blob, "--descriptor", str(desc))
    assert code == 0, err
    fields = {row["field"]: row["ok"] for row in data["descriptor"]}
    assert fields == {
        "digest": True,
        "size": True,
        seekable.ANNOTATION_TABLE_OFFSET: True,
        seekable.ANNOTATION_TABLE_DIGEST: True,
        seekable.ANNOTATION_VERITY_OFFSET: True,
        seekable.ANNOTATION_VERITY_ROOT: True,
    }
    # the sha256 form earlier versions wrote is accepted, and named
    old = {
        seekable.ANNOTATION_TABLE_DIGEST: "sha256:" + hashlib.sha256(split_table(blob)).hexdigest()
    }
    code, data, err = inspect_json(blob, "--annotations", json.dumps(old))
    assert code == 0, err
    assert data["descriptor"][0]["found"] == "matches (sha256, the older form)"


def split_table(blob: bytes) -> bytes:
    """The chunk table payload, read through its skippable frame header."""
    _, data, _ = inspect_json(blob)
    at = data["chunk_table"]["offset"]
    size = int.from_bytes(blob[at + 4 : at + 8], "little")
    return blob[at + 8 : at + 8 + size]


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("digest", "descriptor digest is sha256:00"),
        ("size", "descriptor size is 1"),
        (
            seekable.ANNOTATION_TABLE_OFFSET,
            "descriptor dev.containerd.erofs.zstd.chunk_table_offset",
        ),
        (seekable.ANNOTATION_TABLE_DIGEST, "chunk_digest annotation (sha512) does not match"),
        (seekable.ANNOTATION_VERITY_OFFSET, "descriptor dev.containerd.erofs.dmverity.offset"),
        (seekable.ANNOTATION_VERITY_ROOT, "dm-verity root digest annotation is sha512:00"),
    ],
)
def test_descriptor_mismatch_is_named(
    erofs_bytes: bytes, tmp_path: Path, key: str, words: str
) -> None:
    blob, result = _verity_blob(erofs_bytes)
    desc = _descriptor(blob, result)
    wrong = {
        "digest": "sha256:" + "0" * 64,
        "size": 1,
        seekable.ANNOTATION_TABLE_OFFSET: "12",
        seekable.ANNOTATION_TABLE_DIGEST: "sha512:" + "0" * 128,
        seekable.ANNOTATION_VERITY_OFFSET: "12",
        seekable.ANNOTATION_VERITY_ROOT: "sha512:" + "0" * 128,
    }[key]
    if key in desc:
        desc[key] = wrong
    else:
        desc["annotations"][key] = wrong
    path = tmp_path / "desc.json"
    path.write_text(json.dumps(desc))
    proc = run_cli(["inspect", "--descriptor", str(path), "-"], blob)
    assert proc.returncode == 65
    assert words in _one_line(proc.stderr.decode())
    assert "MISMATCH" in proc.stdout.decode()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--annotations", "{not json"], "--annotations is not JSON"),
        (["--annotations", "[1]"], "--annotations is not a JSON object"),
        (
            ["--descriptor", "/nonexistent/desc.json"],
            "/nonexistent/desc.json: no such file or directory",
        ),
    ],
)
def test_bad_descriptor_options(erofs_bytes: bytes, args: list[str], words: str) -> None:
    blob, _ = pack_bytes(erofs_bytes)
    proc = run_cli(["inspect", *args, "-"], blob)
    assert proc.returncode == 2 and proc.stdout == b""
    assert words in _one_line(proc.stderr.decode())
