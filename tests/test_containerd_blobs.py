"""Blobs shaped as containerd's own seekable-EROFS encoder writes them, through the CLI.

containerd's encoder (PR 12764, ``internal/erofsutils/seekable``;
docs/seekable.md) compresses every chunk with klauspost's zstd encoder
(Reset + Write + Close): a frame whose input reaches 128 KiB, so every 4 MiB
chunk, carries NO Frame Content Size. python-zstandard's
``ZstdCompressor(write_content_size=False)`` writes frames of that shape; the
blob is laid out here with ``struct``, independently of our writer: chunks as
independent frames, then the table in a skippable frame 0x184D2A50 with the
23-byte header and a SHA-512 of every compressed frame. containerd also
accepts any chunk size above 0, and writes dm-verity data with any power of
two from 512 B to 512 KiB as block size (data = hash block size, hash area one
block in) and an EMPTY salt by default; the 8 KiB case is checked against
``veritysetup format``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import zstandard

from stream_processor import dmverity, seekable
from tests.conftest import make_tree, mkfs_erofs, require_tool
from tests.containerd_reader import containerd_read
from tests.processor import run_cli

CHUNK = 4 << 20  # containerd's default chunk size
SKIPPABLE = 0x184D2A50


def compress_chunks(image: bytes, chunk_size: int, level: int = 3) -> list[bytes]:
    """One frame per chunk, without a content size (as klauspost's streaming encoder)."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=False)
    return [cctx.compress(image[at : at + chunk_size]) for at in range(0, len(image), chunk_size)]


def assemble(
    image: bytes, chunk_size: int, frames: list[bytes], verity: bytes | None = None
) -> tuple[bytes, dict[str, str]]:
    """The blob and its annotations, laid out as containerd's EncodeErofsImageTo lays them."""
    blob = bytearray()
    entries = []
    for frame in frames:
        entries.append(struct.pack("<Q", len(blob)) + hashlib.sha512(frame).digest())
        blob += frame
    payload = struct.pack("<IIQIBH", 0xCDE4EC67, 1, len(image), chunk_size, 1, 0)
    payload += b"".join(entries)
    annotations = {
        seekable.ANNOTATION_TABLE_OFFSET: str(len(blob)),
        seekable.ANNOTATION_TABLE_DIGEST: "sha512:" + hashlib.sha512(payload).hexdigest(),
    }
    blob += struct.pack("<II", SKIPPABLE, len(payload)) + payload
    if verity is not None:
        annotations[seekable.ANNOTATION_VERITY_OFFSET] = str(len(blob))
        blob += struct.pack("<II", SKIPPABLE, len(verity)) + verity
    return bytes(blob), annotations


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real mkfs.erofs image of about 10 MiB: three 4 MiB chunks, the last one short."""
    base = tmp_path_factory.mktemp("ctd")
    image = mkfs_erofs(make_tree(base / "root", scale=10), base / "big.erofs")
    data = image.read_bytes()
    assert 2 * CHUNK < len(data) < 3 * CHUNK
    return data


@pytest.fixture(scope="module")
def ctd_blob(big_image: bytes) -> tuple[bytes, dict[str, str]]:
    frames = compress_chunks(big_image, CHUNK)
    for frame in frames:
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN  # no FCS, as klauspost
    return assemble(big_image, CHUNK, frames)


def _fsck(image: bytes, tmp_path: Path) -> None:
    require_tool("fsck.erofs")
    path = tmp_path / "out.erofs"
    path.write_bytes(image)
    check = subprocess.run(["fsck.erofs", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("erofs-stream-processor: ")
    return lines[0]


def test_the_stand_in_is_what_containerds_reader_accepts(
    ctd_blob: tuple[bytes, dict[str, str]], big_image: bytes
) -> None:
    blob, annotations = ctd_blob
    diff_id = "sha256:" + hashlib.sha256(big_image).hexdigest()
    assert containerd_read(blob, annotations, diff_id) == big_image


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--verify-frame-hashes"],
        ["--verify-frame-hashes", "--threads", "1"],
        ["--verify-frame-hashes", "--threads", "2"],
        ["--threads", "2"],
    ],
)
def test_decode_accepts_frames_without_a_content_size(
    ctd_blob: tuple[bytes, dict[str, str]], big_image: bytes, tmp_path: Path, args: list[str]
) -> None:
    blob, _ = ctd_blob
    proc = run_cli(args, blob)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(big_image).digest()
    _fsck(proc.stdout, tmp_path)


def test_inspect_verifies_the_table(ctd_blob: tuple[bytes, dict[str, str]], tmp_path: Path) -> None:
    blob, annotations = ctd_blob
    path = tmp_path / "ctd.blob"
    path.write_bytes(blob)
    text = run_cli(["inspect", str(path)])
    assert text.returncode == 0, text.stderr
    assert any(ln.split() == ["verifies", "yes"] for ln in text.stdout.decode().splitlines()), (
        text.stdout.decode()
    )
    proc = run_cli(["inspect", "--json", "--annotations", json.dumps(annotations), str(path)])
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["descriptor"] and all(e["ok"] for e in record["descriptor"])
    assert not record["errors"]
    table = record["chunk_table"]
    assert table["verified"] is True and table["error"] is None
    assert table["chunks"] == 3 and table["chunk_size"] == CHUNK
    assert table["digest"] == annotations[seekable.ANNOTATION_TABLE_DIGEST]


def _flip_in_frame(blob: bytes, annotations: dict[str, str]) -> bytes:
    """One byte flipped in the middle of the second chunk's frame."""
    payload = blob[int(annotations[seekable.ANNOTATION_TABLE_OFFSET]) + 8 :]
    start, end = (int.from_bytes(payload[23 + i * 72 : 31 + i * 72], "little") for i in (1, 2))
    forged = bytearray(blob)
    forged[(start + end) // 2] ^= 0x40
    return bytes(forged)


def test_a_flipped_byte_in_a_frame_is_refused(
    ctd_blob: tuple[bytes, dict[str, str]], big_image: bytes, tmp_path: Path
) -> None:
    blob, annotations = ctd_blob
    forged = _flip_in_frame(blob, annotations)
    for args in (["--verify-frame-hashes"], ["--verify-frame-hashes", "--threads", "2"]):
        proc = run_cli(args, forged)
        assert proc.returncode == 65, proc.stderr
        _one_line(proc)
        assert len(proc.stdout) < len(big_image)  # the held-back tail was not released
    path = tmp_path / "forged.blob"
    path.write_bytes(forged)
    proc = run_cli(["inspect", "--json", str(path)])
    record = json.loads(proc.stdout)
    assert proc.returncode == 65 and record["exit_code"] == 65
    assert record["error"]


def test_a_reencoded_frame_fails_only_the_sha512(big_image: bytes, tmp_path: Path) -> None:
    """Chunk 1 re-encoded at another level: a valid frame with the right content, so only
    the table's SHA-512 of the compressed frame tells. Refused with the flag and by inspect;
    without the flag the hashes are not checked (README "Verification")."""
    frames = compress_chunks(big_image, CHUNK)
    blob, annotations = assemble(big_image, CHUNK, frames)
    other = compress_chunks(big_image, CHUNK, level=1)[1]
    assert other != frames[1]
    table_at = int(annotations[seekable.ANNOTATION_TABLE_OFFSET])
    payload = bytearray(blob[table_at + 8 :])
    shift = len(other) - len(frames[1])
    at = 23 + 2 * 72  # chunk 2's entry: its frame moved by the new length of chunk 1
    payload[at : at + 8] = struct.pack("<Q", len(frames[0]) + len(other))
    forged = b"".join([frames[0], other, frames[2]])
    forged += struct.pack("<II", SKIPPABLE, len(payload)) + bytes(payload)
    assert len(forged) == len(blob) + shift
    proc = run_cli(["--verify-frame-hashes", "--threads", "2"], forged)
    assert proc.returncode == 65, proc.stderr
    line = _one_line(proc)
    assert "chunk 1 (frame at offset" in line and "SHA-512 of the compressed frame" in line
    assert len(proc.stdout) < len(big_image)
    plain = run_cli([], forged)
    assert plain.returncode == 0 and plain.stdout == big_image
    path = tmp_path / "reencoded.blob"
    path.write_bytes(forged)
    record = json.loads(run_cli(["inspect", "--json", str(path)]).stdout)
    assert record["chunk_table"]["verified"] is False
    assert "SHA-512" in record["chunk_table"]["error"]


@pytest.mark.parametrize("chunk_size", [100_000, 128 << 20])
def test_any_chunk_size_is_accepted(big_image: bytes, tmp_path: Path, chunk_size: int) -> None:
    """Not a multiple of 4 KiB, and larger than the whole image (one short chunk): both are
    legal for containerd. The 128 MiB chunk streams serially; memory stays bounded."""
    blob, _ = assemble(big_image, chunk_size, compress_chunks(big_image, chunk_size))
    proc = run_cli(["--verify-frame-hashes", "--threads", "2"], blob)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == big_image


def test_tiny_chunks_meet_the_framing_bomb_rule(big_image: bytes) -> None:
    """1 KiB chunks: past 4096 frames the frames must average 4 KiB of output, so a ~10 MiB
    image in 1 KiB chunks is refused (docs/seekable.md, "Chunk sizes the decoder accepts")."""
    blob, _ = assemble(big_image, 1024, compress_chunks(big_image, 1024))
    proc = run_cli([], blob)
    assert proc.returncode == 65
    assert "refusing a stream of empty or tiny frames" in _one_line(proc)
    assert len(proc.stdout) < len(big_image)


def test_an_empty_table_parses_but_an_empty_blob_is_no_layer(tmp_path: Path) -> None:
    """Uncompressed size 0: no entries, as containerd's numChunks gives. The table parses;
    a blob with nothing but it holds no image, and decode says so."""
    payload = struct.pack("<IIQIBH", 0xCDE4EC67, 1, 0, CHUNK, 1, 0)
    table = seekable.parse_table(payload)
    assert table.count == 0 and table.uncompressed_size == 0
    blob = struct.pack("<II", SKIPPABLE, len(payload)) + payload
    proc = run_cli([], blob)
    assert proc.returncode == 65 and proc.stdout == b""
    assert "holds no data frame" in _one_line(proc)
    path = tmp_path / "empty.blob"
    path.write_bytes(blob)
    record = json.loads(run_cli(["inspect", "--json", str(path)]).stdout)
    assert record["chunk_table"]["chunks"] == 0 and record["exit_code"] == 65


# -- dm-verity frames with block sizes above the page size -----------------------------------

VERITY_BLOCK = 8192


def _verity_ours(image: bytes, block_size: int, uuid_bytes: bytes) -> tuple[bytes, str]:
    """The payload our writer makes with containerd's defaults: empty salt, given UUID."""
    builder = dmverity.TreeBuilder(b"", block_size)
    builder.update(image)
    tree, root = builder.finish()
    sb = dmverity.Superblock(
        1, 1, uuid_bytes, "sha512", block_size, block_size, builder.data_blocks, b""
    )
    return dmverity.build_payload(sb, tree), root.hex()


@pytest.fixture(scope="module")
def verity_8k(
    big_image: bytes, tmp_path_factory: pytest.TempPathFactory
) -> tuple[bytes, dict[str, str], str]:
    """A containerd-shaped blob whose dm-verity frame has 8 KiB blocks.

    With ``veritysetup`` the payload is the one ``veritysetup format`` writes (hash area one
    block in, ``--salt -``: empty), after checking ours is byte for byte the same.
    """
    ident = uuid.UUID("0b8c8f6e-3a59-4d1c-9e55-1f6a2b7c8d90")
    payload, root = _verity_ours(big_image, VERITY_BLOCK, ident.bytes)
    tool = shutil.which("veritysetup")
    if tool is not None:
        work = tmp_path_factory.mktemp("vs")
        padded = big_image + bytes(-len(big_image) % VERITY_BLOCK)
        dev = work / "layer.erofs"
        dev.write_bytes(padded)
        proc = subprocess.run(
            [
                tool,
                "format",
                "--hash=sha512",
                f"--data-block-size={VERITY_BLOCK}",
                f"--hash-block-size={VERITY_BLOCK}",
                f"--hash-offset={len(padded)}",
                "--salt=-",
                f"--uuid={ident}",
                str(dev),
                str(dev),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        theirs = dev.read_bytes()[len(padded) :]
        assert theirs == payload
        assert f"Root hash:      \t{root}" in proc.stdout or root in proc.stdout
        payload = theirs
    blob, annotations = assemble(big_image, CHUNK, compress_chunks(big_image, CHUNK), payload)
    annotations[seekable.ANNOTATION_VERITY_ROOT] = "sha512:" + root
    return blob, annotations, root


@pytest.mark.parametrize("threads", ["1", "2"])
def test_decode_verifies_an_8k_block_tree(
    verity_8k: tuple[bytes, dict[str, str], str], big_image: bytes, threads: str
) -> None:
    blob, _, _ = verity_8k
    plain = run_cli(["--threads", threads], blob)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == big_image
    proc = run_cli(["--verify-dm-verity", "--verify-frame-hashes", "--threads", threads], blob)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == big_image


def test_inspect_shows_and_verifies_the_8k_tree(
    verity_8k: tuple[bytes, dict[str, str], str], tmp_path: Path
) -> None:
    blob, annotations, root = verity_8k
    path = tmp_path / "v.blob"
    path.write_bytes(blob)
    proc = run_cli(["inspect", "--json", "--annotations", json.dumps(annotations), str(path)])
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert not record["errors"] and all(e["ok"] for e in record["descriptor"])
    fields = {e["field"] for e in record["descriptor"]}
    assert seekable.ANNOTATION_VERITY_ROOT in fields
    v: dict[str, Any] = record["dm_verity"]
    assert v["data_block_size"] == v["hash_block_size"] == VERITY_BLOCK
    assert v["salt"] == "" and v["verified"] is True
    assert v["root_digest"] == "sha512:" + root
    text = run_cli(["inspect", str(path)]).stdout.decode()
    assert "(none: salt size 0" in text and "data 8192, hash 8192" in text


def test_veritysetup_verifies_the_8k_tree(
    verity_8k: tuple[bytes, dict[str, str], str], big_image: bytes, tmp_path: Path
) -> None:
    tool = shutil.which("veritysetup")
    if tool is None:
        pytest.skip("veritysetup is not installed (Debian package cryptsetup-bin)")
    blob, annotations, root = verity_8k
    payload = blob[int(annotations[seekable.ANNOTATION_VERITY_OFFSET]) + 8 :]
    (tmp_path / "d").write_bytes(big_image)
    (tmp_path / "t").write_bytes(payload)
    ok = subprocess.run(
        [tool, "verify", str(tmp_path / "d"), str(tmp_path / "t"), root], capture_output=True
    )
    assert ok.returncode == 0, ok.stderr


def test_a_flipped_byte_in_the_8k_tree_is_refused(
    verity_8k: tuple[bytes, dict[str, str], str], big_image: bytes
) -> None:
    blob, annotations, _ = verity_8k
    forged = bytearray(blob)
    forged[int(annotations[seekable.ANNOTATION_VERITY_OFFSET]) + 8 + VERITY_BLOCK + 7] ^= 1
    proc = run_cli(["--verify-dm-verity"], bytes(forged))
    assert proc.returncode == 65, proc.stderr
    assert "dm-verity: hash tree level" in _one_line(proc)
    assert len(proc.stdout) < len(big_image)


def test_a_block_size_beyond_512k_is_refused(big_image: bytes) -> None:
    """1 MiB blocks: neither containerd (go-dmverity) nor veritysetup accepts them."""
    payload, _ = _verity_ours(big_image[: 1 << 20], 1 << 20, bytes(16))
    blob, _ = assemble(big_image, CHUNK, compress_chunks(big_image, CHUNK), payload)
    proc = run_cli([], blob)
    assert proc.returncode == 65
    line = _one_line(proc)
    assert "data block size 1048576 is not a power of two from 512 to 524288" in line
    assert len(proc.stdout) < len(big_image)
