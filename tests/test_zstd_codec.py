"""Decompressing into a lent buffer: same bytes and same errors as before, and the end of
each frame still proven by libzstd itself (the end probe).

Streams are real zstd (python-zstandard, i.e. libzstd); the EROFS payload is the
real mkfs.erofs sample image. Speed is measured in ``benchmarks/bench_decode.py``.
"""

from __future__ import annotations

import os
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from stream_processor import zstd_codec
from stream_processor.decode import DecodeOptions, DecodeResult, decode
from stream_processor.errors import DataError
from stream_processor.framing import ZstdStats
from stream_processor.sink import HoldbackSink
from stream_processor.source import Source
from stream_processor.zstd_codec import (
    OUTPUT_STEP,
    decode_zstd,
    decode_zstd_into,
    reused_output,
)

_OPEN: list[typing.IO[bytes]] = []


@pytest.fixture(autouse=True)
def _close_sources() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _source(blob: bytes) -> Source:
    f = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _close_sources)
    f.write(blob)
    f.seek(0)
    _OPEN.append(f)
    return Source(f.fileno())


def _stream(data: bytes, *, checksum: bool = True, content_size: bool = True) -> bytes:
    cctx = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size)
    if content_size:
        return cctx.compress(data)
    cobj = cctx.compressobj()
    return cobj.compress(data) + cobj.flush()


def _payload() -> bytes:
    """Several MiB that compress to many blocks of every kind (raw, RLE, compressed)."""
    parts = [os.urandom(300_000), b"\0" * 700_000, bytes(range(256)) * 8000, os.urandom(5000)]
    return b"".join(parts) * 2


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("content_size", [True, False])
def test_one_reused_buffer_gives_the_same_bytes(checksum: bool, content_size: bool) -> None:
    data = _payload()
    blob = _stream(data, checksum=checksum, content_size=content_size)
    buffer = memoryview(bytearray(OUTPUT_STEP))
    seen: set[int] = set()
    out = bytearray()
    for view in decode_zstd_into(_source(blob), lambda size: buffer[:size]):
        assert view.obj is buffer.obj  # no fresh output buffers
        seen.add(len(view))
        out += view
    assert out == data and max(seen) == OUTPUT_STEP


def test_frames_and_skippable_frames_through_a_reused_buffer() -> None:
    data = _payload()
    skippable = (0x184D2A5E).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    pieces = [data[:1000], data[1000:3_000_000], data[3_000_000:]]
    blob = skippable + b"".join(_stream(p) + skippable for p in pieces)
    stats = ZstdStats()
    out = b"".join(decode_zstd(_source(blob), stats=stats))
    assert out == data and stats.frames == 3 and stats.skippable_frames == 4


def test_corrupt_block_is_named() -> None:
    text = b"".join(b"line %d of a text that compresses\n" % i for i in range(100_000))
    blob = bytearray(_stream(text, checksum=False))
    blob[len(blob) // 2 : len(blob) // 2 + 2000] = bytes(2000)
    with pytest.raises(DataError, match="zstd: corrupt data in frame at offset 0"):
        for _ in decode_zstd_into(_source(bytes(blob)), reused_output()):
            pass


def test_checksum_mismatch_is_corrupt_data() -> None:
    blob = bytearray(_stream(_payload()))
    blob[-1] ^= 0xFF
    with pytest.raises(DataError, match="corrupt data in frame at offset 0"):
        b"".join(decode_zstd(_source(bytes(blob))))


def test_truncated_frame_is_named() -> None:
    blob = _stream(_payload())
    with pytest.raises(DataError, match="frame at offset 0 is truncated"):
        b"".join(decode_zstd(_source(blob[: len(blob) // 2])))


def _walk_ending_early(monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    """Make the block walk hand libzstd all but the last ``cut`` bytes of each frame,
    as a walk that disagreed with libzstd about where the frame ends would."""
    real = zstd_codec.frame_blocks

    def short(src: Source, header: zstd_codec.FrameHeader) -> Iterator[memoryview]:
        whole = b"".join(bytes(piece) for piece in real(src, header))
        yield memoryview(whole[: len(whole) - cut])

    monkeypatch.setattr(zstd_codec, "frame_blocks", short)


@pytest.mark.parametrize(
    ("cut", "what"),
    [(4, "the checksum"), (9, "inside the last block"), (200, "inside the last block")],
)
def test_a_frame_libzstd_did_not_finish_is_refused(
    monkeypatch: pytest.MonkeyPatch, cut: int, what: str
) -> None:
    """decompressobj's ``eof`` used to say this; the end probe says it now, wherever in
    the frame libzstd still is: within the checksum or inside a block."""
    data = os.urandom(3000) + b"a" * 100_000 + os.urandom(50_000)
    blob = _stream(data)
    _walk_ending_early(monkeypatch, cut)
    with pytest.raises(DataError, match="did not end where its blocks said"):
        for _ in decode_zstd_into(_source(blob), reused_output()):
            pass


def test_a_frame_whose_last_block_is_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """libzstd waiting for a block header reads the probe's first bytes as one: refused."""
    data = os.urandom(200_000)  # raw blocks: the last one holds 200_000 - 131_072 bytes
    blob = _stream(data, checksum=False)
    _walk_ending_early(monkeypatch, 200_000 - 131_072 + 3)
    with pytest.raises(DataError, match="did not end where its blocks said"):
        b"".join(decode_zstd(_source(blob)))


def _decode_to_file(blob: bytes, tmp_path: Path, threads: int) -> bytes:
    """``decode`` (validator, held-back tail, ring) from a file to a file."""
    blob_path, out_path = tmp_path / f"in-{threads}", tmp_path / f"out-{threads}"
    blob_path.write_bytes(blob)
    with blob_path.open("rb") as src, out_path.open("wb") as out:
        decode(src.fileno(), out.fileno(), DecodeOptions(threads=threads), DecodeResult(None))
    return out_path.read_bytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_image_arriving_in_tiny_frames_is_judged_on_its_own_bytes(
    erofs_bytes: bytes, tmp_path: Path, threads: int
) -> None:
    """The gate keeps the image's first bytes until it has seen the superblock; they arrive
    here in 100-byte frames, each decompressed into the same lent ring memory."""
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    head, rest = erofs_bytes[:4096], erofs_bytes[4096:]
    blob = b"".join(cctx.compress(head[i : i + 100]) for i in range(0, len(head), 100))
    blob += cctx.compress(rest)
    assert _decode_to_file(blob, tmp_path, threads) == erofs_bytes


@pytest.mark.parametrize("threads", [1, 2])
def test_large_image_through_the_ring(tmp_path: Path, threads: int, erofs_bytes: bytes) -> None:
    """Several MiB after the superblock: the ring is lent, held back, written and reused."""
    tail = _payload()
    image = erofs_bytes + tail
    frames = [image[: 3 << 20], image[3 << 20 :]]
    blob = b"".join(_stream(f, content_size=threads == 2) for f in frames)
    assert _decode_to_file(blob, tmp_path, threads) == image


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_lends_the_sinks_ring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, erofs_bytes: bytes, threads: int
) -> None:
    """The streamed frame decompresses into ``HoldbackSink.buffer``, not fresh buffers."""
    lent: list[int] = []
    real = HoldbackSink.buffer

    def spy(self: HoldbackSink, size: int) -> memoryview:
        view = real(self, size)
        lent.append(id(view.obj))
        return view

    monkeypatch.setattr(HoldbackSink, "buffer", spy)
    image = erofs_bytes + _payload()
    assert _decode_to_file(_stream(image), tmp_path, threads) == image
    assert len(lent) > 8 and len(set(lent)) == 1


# -- the FrameObserver interface: per-frame events, skippable frames read or skipped ------


class _Events:
    """A FrameObserver that writes down every call, and reads skippable payloads if asked."""

    def __init__(self, read: bool = False) -> None:
        self.read = read
        self.calls: list[tuple[object, ...]] = []

    def frame_start(self, index: int, offset: int) -> str | None:
        self.calls.append(("start", index, offset))
        return "sha512"

    def frame_end(
        self, index: int, end_offset: int, decompressed_size: int, digest: bytes | None
    ) -> None:
        self.calls.append(("end", index, end_offset, decompressed_size, digest))

    def skippable(self, frame: zstd_codec.SkippableFrame) -> None:
        payload = frame.payload() if self.read else None
        self.calls.append(("skippable", frame.magic, frame.offset, frame.size, frame.head, payload))

    def finish(self, total_out: int, end_offset: int) -> None:
        self.calls.append(("finish", total_out, end_offset))


def _framed() -> tuple[bytes, list[bytes], bytes]:
    """Two data frames around a skippable frame: the blob, the frames, the payload."""
    payload = b"payload " * 100
    frames = [_stream(b"a" * 70_000), _stream(os.urandom(9000))]
    skippable = (0x184D2A5E).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload
    return frames[0] + skippable + frames[1], frames, payload


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("read", [False, True])
def test_an_observer_hears_each_frame_once_in_stream_order(threads: int, read: bool) -> None:
    """Per frame: a start (answered with the hash to use) and an end carrying that hash of
    the compressed frame, also when the second frame decodes on a pool thread; a
    skippable frame shows its first 512 bytes, and one left unread is skipped."""
    import hashlib

    from stream_processor.zstd_parallel import decode_zstd_parallel

    blob, frames, payload = _framed()
    events = _Events(read)
    src = _source(blob)
    if threads == 1:
        out = b"".join(decode_zstd(src, observer=events))
    else:
        out = b"".join(decode_zstd_parallel(src, threads=threads, observer=events))
    assert out == b"a" * 70_000 + zstandard.ZstdDecompressor().decompress(frames[1])
    second = len(frames[0]) + 8 + len(payload)
    assert events.calls == [
        ("start", 0, 0),
        ("end", 0, len(frames[0]), 70_000, hashlib.sha512(frames[0]).digest()),
        ("skippable", 0x184D2A5E, len(frames[0]), 800, payload[:512], payload if read else None),
        ("start", 1, second),
        ("end", 1, len(blob), 9000, hashlib.sha512(frames[1]).digest()),
        ("finish", len(out), len(blob)),
    ]


@pytest.mark.parametrize(
    ("read", "message"),
    [(False, "is truncated$"), (True, r"is truncated \(790 of 800 bytes\)")],
)
def test_a_truncated_skippable_frame_is_refused_read_or_skipped(read: bool, message: str) -> None:
    blob, frames, _ = _framed()
    events = _Events(read)
    with pytest.raises(DataError, match=f"skippable frame at offset {len(frames[0])} {message}"):
        for _ in decode_zstd(_source(blob[: len(frames[0]) + 8 + 790]), observer=events):
            pass
    assert [call[0] for call in events.calls] == ["start", "end"] + (
        ["skippable"] if not read else []
    )
