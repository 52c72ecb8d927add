"""The seekable layout: chunk-table parsing and its verification while decoding.

Blobs are packed from real mkfs.erofs images (conftest ``erofs_bytes``) and
then taken apart and reassembled to corrupt exactly one thing: a chunk, a
table hash, an offset, a size, the header. Every corruption must end in exit
65 with a message naming the chunk, and never a complete image on stdout.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import subprocess
import tempfile
from array import array
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_processor import seekable
from stream_processor.decode import DecodeOptions, DecodeResult, decode
from stream_processor.errors import DataError
from stream_processor.mediatypes import EROFS_LAYER_ZSTD, OCI_LAYER_TAR_ZSTD
from stream_processor.pack import PackResult
from tests.builders import CHUNK, assemble, pack_bytes, split
from tests.processor import run_cli


def table_for(frames: list[bytes], size: int, chunk: int = CHUNK) -> bytes:
    """A correct table for ``frames`` (offsets and SHA-512 recomputed)."""
    offsets, at = [], 0
    for frame in frames:
        offsets.append(at)
        at += len(frame)
    digests = [hashlib.sha512(f).digest() for f in frames]
    return seekable.build_table(size, chunk, offsets, digests)


def decode_lib(
    blob: bytes, threads: int = 1, verify: bool = True
) -> tuple[bytes, DecodeResult, DataError | None]:
    """Run the real decode path on files; return stdout bytes, the result, the error.

    ``verify`` is ``--verify-frame-hashes``: on here, since most tests below are
    about the table's hashes; the default (off) has its own tests.
    """
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout:
        fin.write(blob)
        fin.seek(0)
        result = DecodeResult(None)
        error = None
        try:
            options = DecodeOptions(threads=threads, verify_frame_hashes=verify)
            decode(fin.fileno(), fout.fileno(), options, result)
        except DataError as exc:
            error = exc
        fout.seek(0)
        return fout.read(), result, error


@pytest.fixture(scope="module")
def packed(erofs_bytes: bytes) -> tuple[bytes, PackResult]:
    return pack_bytes(erofs_bytes)


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_chunked_blob_decodes_identically(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: int
) -> None:
    blob, _ = packed
    out, result, error = decode_lib(blob, threads)
    assert error is None
    assert out == erofs_bytes
    assert result.zstd.frames == seekable.chunk_count(len(erofs_bytes), CHUNK)


def test_stock_zstd_decodes_the_chunked_blob(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes
) -> None:
    out = subprocess.run(["zstd", "-dc"], input=packed[0], capture_output=True, check=True)
    assert out.stdout == erofs_bytes


def test_table_layout_matches_reference(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes
) -> None:
    blob, result = packed
    parts = split(blob)
    magic, version, size, chunk, algo, reserved = parts.header
    assert (magic, version, size, chunk, algo, reserved) == (
        0xCDE4EC67,
        1,
        len(erofs_bytes),
        CHUNK,
        seekable.HASH_SHA512,
        0,
    )
    assert len(parts.table) == 23 + len(parts.frames) * (8 + 64)
    table = seekable.parse_table(parts.table)
    at = 0
    for chunk_entry, frame in zip(table.chunks, parts.frames, strict=True):
        assert chunk_entry.compressed_offset == at
        assert chunk_entry.digest == hashlib.sha512(frame).digest()
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == chunk_entry.uncompressed_size
        assert params.has_checksum
        at += len(frame)
    offset = int(result.annotations[seekable.ANNOTATION_TABLE_OFFSET])
    assert blob[offset : offset + 4] == (0x184D2A50).to_bytes(4, "little")
    digest = "sha512:" + hashlib.sha512(parts.table).hexdigest()
    assert result.annotations[seekable.ANNOTATION_TABLE_DIGEST] == digest == table.digest()


# -- corruption of chunks, the table, offsets and sizes ------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_every_corrupted_chunk_is_rejected(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: int
) -> None:
    blob, _ = packed
    parts = split(blob)
    at = 0
    for i, frame in enumerate(parts.frames):
        bad = bytearray(blob)
        bad[at + len(frame) // 2] ^= 0x55
        out, _, error = decode_lib(bytes(bad), threads)
        assert error is not None, f"corrupting chunk {i} went unnoticed"
        assert f"offset {at}" in error.message or f"chunk {i}" in error.message
        assert len(out) < len(erofs_bytes)
        at += len(frame)


def test_chunk_replaced_by_other_valid_frame_fails_its_hash(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes
) -> None:
    """A frame that decodes to the same bytes but is not the one the table hashed."""
    parts = split(packed[0])
    frames = list(parts.frames)
    content = erofs_bytes[2 * CHUNK : 3 * CHUNK]
    frames[2] = zstandard.ZstdCompressor(write_checksum=False).compress(content)
    assert frames[2] != parts.frames[2]
    good = table_for(frames, len(erofs_bytes))
    table = seekable.parse_table(good)
    original = seekable.parse_table(parts.table)
    # keep the new offsets but the original hashes
    digests = [c.digest or b"" for c in original.chunks]
    stale = seekable.build_table(
        len(erofs_bytes), CHUNK, [c.compressed_offset for c in table.chunks], digests
    )
    for threads in (1, 2):
        out, _, error = decode_lib(assemble(frames, stale), threads)
        assert error is not None
        assert "chunk 2" in error.message and "SHA-512" in error.message
        assert len(out) < len(erofs_bytes)
    out, _, error = decode_lib(assemble(frames, good))
    assert error is None and out == erofs_bytes


def _stale_hash_blob(packed: tuple[bytes, PackResult], erofs_bytes: bytes) -> tuple[bytes, bytes]:
    """The packed blob with one bit of the table's SHA-512 of chunk 5 flipped (and the
    original table): every byte of image it decodes to is still exact."""
    parts = split(packed[0])
    table = bytearray(parts.table)
    table[23 + 5 * 72 + 8 + 10] ^= 1
    return assemble(parts.frames, bytes(table)), parts.table


@pytest.mark.parametrize("threads", ["1", "2"])
def test_frame_hashes_are_checked_only_when_asked(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: str, tmp_path: Path
) -> None:
    """By default the decoder leaves the table's SHA-512s alone (containerd has already
    checked the blob's digest, and checks the image's): the exact image, a note in the
    log. ``--verify-frame-hashes`` or its environment variable refuse the stale hash."""
    blob, _ = _stale_hash_blob(packed, erofs_bytes)
    log = tmp_path / "sp.log"
    proc = run_cli(
        ["--threads", threads, "--log-file", str(log), "--log-level", "info"], stdin=blob
    )
    assert proc.returncode == 0 and proc.stdout == erofs_bytes and proc.stderr == b""
    record = json.loads(log.read_text())
    assert any("SHA-512s were not checked" in note for note in record["notes"])
    for args, env in (
        (["--verify-frame-hashes"], {}),
        ([], {"EROFS_SP_VERIFY_FRAME_HASHES": "1"}),
    ):
        proc = run_cli(["--threads", threads, *args], stdin=blob, env=env)
        assert proc.returncode == 65, proc.stderr
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and "chunk 5" in lines[0] and "SHA-512" in lines[0]
        assert len(proc.stdout) < len(erofs_bytes)


def test_frame_hash_switch_in_the_environment_must_be_a_switch(
    packed: tuple[bytes, PackResult],
) -> None:
    proc = run_cli(stdin=packed[0], env={"EROFS_SP_VERIFY_FRAME_HASHES": "maybe"})
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        "erofs-stream-processor: EROFS_SP_VERIFY_FRAME_HASHES='maybe' is not a switch; use 1 or 0"
    ]


@pytest.mark.parametrize("threads", [1, 2])
def test_table_sizes_are_checked_without_frame_hashes(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: int
) -> None:
    """Hashes off, the table still pins count, offsets (``test_wrong_offset_names_the_chunk``),
    sizes and header."""
    parts = split(packed[0])
    table = bytearray(parts.table)
    table[8:16] = (len(erofs_bytes) + 4096).to_bytes(8, "little")  # the header's size
    out, _, error = decode_lib(assemble(parts.frames, bytes(table)), threads, verify=False)
    assert error is not None and "chunk table" in error.message
    assert len(out) < len(erofs_bytes)
    out, _, error = decode_lib(packed[0], threads, verify=False)
    assert error is None and out == erofs_bytes


@pytest.mark.parametrize("threads", [1, 2])
def test_corrupted_table_hash_names_the_chunk(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: int
) -> None:
    parts = split(packed[0])
    table = bytearray(parts.table)
    entry = 23 + 5 * 72
    table[entry + 8 + 10] ^= 1  # a byte of chunk 5's SHA-512
    out, _, error = decode_lib(assemble(parts.frames, bytes(table)), threads)
    assert error is not None
    assert "chunk 5" in error.message and "SHA-512" in error.message
    assert len(out) < len(erofs_bytes)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_wrong_offset_names_the_chunk(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: int, verify: bool
) -> None:
    parts = split(packed[0])
    table = bytearray(parts.table)
    entry = 23 + 3 * 72
    offset = int.from_bytes(table[entry : entry + 8], "little")
    table[entry : entry + 8] = (offset + 1).to_bytes(8, "little")
    _, _, error = decode_lib(assemble(parts.frames, bytes(table)), threads, verify)
    assert error is not None
    assert "chunk 3" in error.message and "starts at offset" in error.message


def test_non_increasing_offsets_are_refused(packed: tuple[bytes, PackResult]) -> None:
    parts = split(packed[0])
    table = bytearray(parts.table)
    table[23 + 72 : 23 + 72 + 8] = (0).to_bytes(8, "little")  # chunk 1 at offset 0
    with pytest.raises(DataError, match="chunk 1 offset 0 does not increase"):
        seekable.parse_table(bytes(table))


@pytest.mark.parametrize("threads", [1, 2])
def test_wrong_uncompressed_size_is_refused(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, threads: int
) -> None:
    """One byte less: the last chunk and the total no longer match."""
    parts = split(packed[0])
    table = bytearray(parts.table)
    struct.pack_into("<Q", table, 8, len(erofs_bytes) - 1)
    out, _, error = decode_lib(assemble(parts.frames, bytes(table)), threads)
    last = len(parts.frames) - 1
    assert error is not None
    assert f"chunk {last}" in error.message and "the table says" in error.message
    assert len(out) < len(erofs_bytes)


def test_chunk_of_the_wrong_size_is_refused(erofs_bytes: bytes) -> None:
    """Frames cut at 8 KiB under a table that says 16 KiB (same count, so sizes differ)."""
    size = 5 * CHUNK
    image = erofs_bytes[:size]
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    cuts = [0, CHUNK // 2, CHUNK * 2, CHUNK * 3, CHUNK * 4, size]
    frames = [cctx.compress(image[a:b]) for a, b in itertools.pairwise(cuts)]
    table = table_for(frames, size)
    with pytest.raises(
        DataError, match=r"chunk 0 .*decompresses to 8192 bytes, the table says 16384"
    ):
        _run_verifier(assemble(frames, table))


def test_extra_frame_is_refused(packed: tuple[bytes, PackResult], erofs_bytes: bytes) -> None:
    parts = split(packed[0])
    frames = [*parts.frames, parts.frames[-1]]
    _, _, error = decode_lib(assemble(frames, parts.table))
    assert error is not None
    assert f"lists {len(parts.frames)} chunks but the stream holds {len(frames)}" in error.message


def test_missing_frame_is_refused(packed: tuple[bytes, PackResult]) -> None:
    parts = split(packed[0])
    _, _, error = decode_lib(assemble(parts.frames[:-1], parts.table), threads=2)
    assert error is not None
    assert "chunks but the stream holds" in error.message


def test_second_table_is_refused(packed: tuple[bytes, PackResult]) -> None:
    parts = split(packed[0])
    blob = assemble(parts.frames, parts.table) + seekable.skippable_frame(parts.table)
    _, _, error = decode_lib(blob)
    assert error is not None and "second chunk table" in error.message


def test_truncated_table_is_refused(packed: tuple[bytes, PackResult], erofs_bytes: bytes) -> None:
    blob = packed[0]
    for cut in (5, 40, 200):
        out, _, error = decode_lib(blob[:-cut])
        assert error is not None and "truncated" in error.message
        assert len(out) < len(erofs_bytes)


# -- header sanity -------------------------------------------------------------------


def _header(**fields: int) -> bytes:
    values = {
        "magic": seekable.TABLE_MAGIC,
        "version": 1,
        "size": 3 * CHUNK,
        "chunk": CHUNK,
        "algo": 0,
        "reserved": 0,
    }
    values.update(fields)
    return seekable.HEADER.pack(*values.values())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 2}, "unknown version 2"),
        ({"reserved": 1}, "reserved header field"),
        ({"algo": 7}, "unknown hash algorithm 7"),
        ({"chunk": 0}, "chunk size 0 is outside"),
        # containerd accepts any chunk size > 0 and an empty table (docs/seekable.md), so
        # these two are refused only because the three entries do not fit them
        ({"chunk": 1 << 31}, "entries, but"),
        ({"size": 0}, "entries, but"),
        ({"size": 1 << 60}, "entries, but"),
    ],
)
def test_insane_headers_are_refused(fields: dict[str, int], message: str) -> None:
    entries = b"".join((i * 100).to_bytes(8, "little") for i in range(3))
    with pytest.raises(DataError, match=message):
        seekable.parse_table(_header(**fields) + entries)


def test_short_and_mismatched_payloads_are_refused() -> None:
    with pytest.raises(DataError, match="too short"):
        seekable.parse_v1(_header()[:20])
    with pytest.raises(DataError, match="holds 2 entries"):
        seekable.parse_table(_header() + bytes(16))
    with pytest.raises(DataError, match="bad magic"):
        seekable.parse_v1(b"\0\0\0\0" + _header()[4:] + bytes(24))


def test_build_then_parse_round_trips() -> None:
    offsets = [0, 10, 25]
    digests = [bytes([i]) * 64 for i in range(3)]
    table = seekable.parse_table(seekable.build_table(3 * CHUNK - 5, CHUNK, offsets, digests))
    assert [c.compressed_offset for c in table.chunks] == offsets
    assert [c.uncompressed_size for c in table.chunks] == [CHUNK, CHUNK, CHUNK - 5]
    assert [c.uncompressed_offset for c in table.chunks] == [0, CHUNK, 2 * CHUNK]
    assert [c.digest for c in table.chunks] == digests
    plain = seekable.parse_table(seekable.build_table(CHUNK, CHUNK, [0], None))
    assert plain.hash_name == "none" and plain.chunks[0].digest is None


def test_a_second_layout_plugs_in_by_magic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser is open to another layout: registering one is all it takes."""
    marker = b"XIDX"

    def parse_other(payload: bytes) -> seekable.ChunkTable:
        return seekable.ChunkTable(
            layout="other",
            version=1,
            uncompressed_size=4096,
            chunk_size=4096,
            hash_algo=0,
            compressed_offsets=array("Q", [0]),
            uncompressed_offsets=array("Q", [0]),
            uncompressed_sizes=array("Q", [4096]),
            digests=b"",
            raw=payload,
        )

    monkeypatch.setitem(seekable.LAYOUTS, marker, parse_other)
    assert seekable.is_table_payload(marker + bytes(28))
    assert seekable.parse_table(marker + bytes(28)).layout == "other"


def test_oversized_table_frame_is_refused(packed: tuple[bytes, PackResult]) -> None:
    """A table payload length is untrusted: more than the reader's limit is refused unread."""
    parts = split(packed[0])
    huge = (
        seekable.SKIPPABLE_TABLE_MAGIC.to_bytes(4, "little")
        + (100 << 20).to_bytes(4, "little")
        + parts.table
    )
    _, _, error = decode_lib(b"".join(parts.frames) + huge)
    assert error is not None and "declares" in error.message


# -- skippable frames that are not tables -------------------------------------------


def test_dm_verity_frame_is_checked_and_noted(erofs_bytes: bytes) -> None:
    blob, _ = pack_bytes(erofs_bytes, dm_verity_block_size=4096)
    for threads in (1, 2):
        decoded, result, error = decode_lib(blob, threads)
        assert error is None and decoded == erofs_bytes
        assert any("dm-verity frame at offset" in note for note in result.notes)
    parts = split(pack_bytes(erofs_bytes)[0])
    empty = seekable.skippable_frame(seekable.VERITY_SIGNATURE + bytes(4096 - 8))
    _, _, error = decode_lib(assemble(parts.frames, parts.table) + empty, 1)
    assert error is not None and "dm-verity: superblock version 0" in error.message


def test_plain_multi_frame_stream_without_table_decodes(erofs_bytes: bytes) -> None:
    parts = split(pack_bytes(erofs_bytes)[0])
    out, _, error = decode_lib(b"".join(parts.frames), threads=2)
    assert error is None and out == erofs_bytes


def _run_verifier(
    blob: bytes, verifier: seekable.ChunkTableVerifier | None = None
) -> seekable.ChunkTableVerifier:
    from stream_processor.source import Source
    from stream_processor.zstd_codec import decode_zstd

    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        verifier = verifier if verifier is not None else seekable.ChunkTableVerifier()
        for _ in decode_zstd(Source(f.fileno()), observer=verifier):
            pass
        return verifier


def test_verifier_reports_what_it_saw(packed: tuple[bytes, PackResult]) -> None:
    verifier = _run_verifier(packed[0])
    assert verifier.verified
    assert verifier.table is not None
    assert verifier.frame_count == verifier.table.count
    assert all(f.hashed for f in verifier.frames())
    assert [f.offset for f in verifier.frames()] == list(verifier.table.compressed_offsets)


def test_a_truncated_skippable_frame_is_refused_not_recorded(
    packed: tuple[bytes, PackResult],
) -> None:
    """A skippable frame the verifier does not read is skipped before it is recorded: cut
    short, it is refused, and neither listed (``inspect``) nor noted as skipped."""
    parts = split(packed[0])
    unknown = seekable.skippable_frame(b"x" * 1000, seekable.SKIPPABLE_TABLE_MAGIC + 5)
    at = sum(len(f) for f in parts.frames)
    notes: list[str] = []
    verifier = seekable.ChunkTableVerifier(notes)
    with pytest.raises(DataError, match=f"skippable frame at offset {at} is truncated$"):
        _run_verifier(b"".join(parts.frames) + unknown[:-30], verifier)
    assert verifier.skipped == [] and notes == []
    verifier = _run_verifier(b"".join(parts.frames) + unknown, seekable.ChunkTableVerifier(notes))
    assert verifier.skipped == [(at, 1000, "unknown (magic 0x184d2a55)")]
    assert notes == [f"skipped unknown (magic 0x184d2a55) in a skippable frame at offset {at}"]


# -- through the CLI, as containerd runs it -----------------------------------------


def test_cli_rejects_a_bad_table_with_one_line_and_no_full_image(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, tmp_path: Path
) -> None:
    parts = split(packed[0])
    table = bytearray(parts.table)
    table[23 + 72] ^= 0x01  # chunk 1's offset, one byte off (checked with or without hashes)
    blob = assemble(parts.frames, bytes(table))
    for threads in ("1", "2"):
        proc = run_cli(["--threads", threads, "--media-type", EROFS_LAYER_ZSTD], blob)
        assert proc.returncode == 65
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "chunk 1" in lines[0], lines
        assert "Traceback" not in proc.stderr.decode()
        assert len(proc.stdout) < len(erofs_bytes)
    ok = run_cli(["--threads", "2"], packed[0])
    assert ok.returncode == 0 and ok.stdout == erofs_bytes


# -- properties: nothing but DataError, never a wrong image --------------------------


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=400), count=st.integers(0, 6), algo=st.integers(0, 2))
def test_any_table_payload_parses_or_is_refused(payload: bytes, count: int, algo: int) -> None:
    header = seekable.HEADER.pack(seekable.TABLE_MAGIC, 1, count * 5000, 4096, algo, 0)
    for data in (payload, header + payload, seekable.TABLE_MAGIC_BYTES + payload):
        try:
            table = seekable.parse_table(data)
        except DataError:
            continue
        assert sum(c.uncompressed_size for c in table.chunks) == table.uncompressed_size


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_mutation_is_refused_or_harmless(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, data: st.DataObject
) -> None:
    blob = bytearray(packed[0])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] ^= data.draw(st.integers(1, 255))
    threads = data.draw(st.sampled_from([1, 2]))
    out, _, error = decode_lib(bytes(blob), threads)
    if error is None:
        assert out == erofs_bytes
    else:
        assert len(out) < len(erofs_bytes)


def test_checked_verity_frame_reaches_the_log_record(erofs_bytes: bytes, tmp_path: Path) -> None:
    blob, _ = pack_bytes(erofs_bytes, dm_verity_block_size=4096)
    log = tmp_path / "sp.log"
    proc = run_cli(["--log-file", str(log), "--log-level", "info"], blob)
    assert proc.returncode == 0 and proc.stdout == erofs_bytes
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["event"] == "decoded"
    assert any("dm-verity frame at offset" in note for note in record["notes"])
    assert record["frames"] == seekable.chunk_count(len(erofs_bytes), CHUNK)


def test_shared_tar_zstd_route_verifies_tables_too(
    packed: tuple[bytes, PackResult], erofs_bytes: bytes, tmp_path: Path
) -> None:
    """containerd 2.3 sends erofs+zstd down the tar+zstd route: the table is checked there too,
    and a multi-frame tar layer with no table still passes through byte for byte."""
    import tarfile

    route = ["--media-type", OCI_LAYER_TAR_ZSTD]
    parts = split(packed[0])
    table = bytearray(parts.table)
    table[23 + 3 * 72 + 8] ^= 1
    bad = run_cli([*route, "--verify-frame-hashes"], assemble(parts.frames, bytes(table)))
    assert bad.returncode == 65 and b"chunk 3" in bad.stderr
    assert run_cli(route, packed[0]).stdout == erofs_bytes

    tar_path = tmp_path / "layer.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(Path(__file__), arcname="test_seekable.py")
    tar_bytes = tar_path.read_bytes()
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    frames = [cctx.compress(tar_bytes[i : i + 4096]) for i in range(0, len(tar_bytes), 4096)]
    ok = run_cli(route, b"".join(frames))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == tar_bytes
