"""The parallel frame decoder: same bytes and same errors as the streaming decoder.

Streams are real zstd (python-zstandard, i.e. libzstd) cut into frames; the
EROFS payload is the real mkfs.erofs sample image. Speed is measured in
``benchmarks/bench_seekable.py``, never here.
"""

from __future__ import annotations

import tempfile
import threading
import typing

import pytest
import zstandard

from stream_processor.errors import DataError
from stream_processor.framing import DEFAULT_MAX_WINDOW, ZstdStats
from stream_processor.source import Source
from stream_processor.zstd_codec import SkippableFrame, decode_zstd
from stream_processor.zstd_parallel import (
    MAX_PARALLEL_FRAME,
    ParallelDecoder,
    decode_zstd_parallel,
)
from tests.processor import run_cli


def frames_of(data: bytes, size: int, *, content_size: bool = True) -> list[bytes]:
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=content_size)
    out = []
    for at in range(0, len(data), size):
        piece = data[at : at + size]
        if content_size:
            out.append(cctx.compress(piece))
        else:
            cobj = cctx.compressobj()
            out.append(cobj.compress(piece) + cobj.flush())
    return out


def run(
    blob: bytes,
    threads: int,
    *,
    max_frame: int = MAX_PARALLEL_FRAME,
    max_window_size: int = DEFAULT_MAX_WINDOW,
) -> tuple[bytes, ZstdStats]:
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        stats = ZstdStats()
        gen = decode_zstd_parallel(
            Source(f.fileno()),
            threads=threads,
            stats=stats,
            max_frame=max_frame,
            max_window_size=max_window_size,
        )
        return b"".join(gen), stats


def run_serial(blob: bytes) -> bytes:
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        return b"".join(decode_zstd(Source(f.fileno())))


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("frame_size", [4096, 7000, 65536])
def test_many_frames_come_out_in_order(erofs_bytes: bytes, threads: int, frame_size: int) -> None:
    blob = b"".join(frames_of(erofs_bytes, frame_size))
    out, stats = run(blob, threads)
    assert out == erofs_bytes == run_serial(blob)
    assert stats.frames == -(-len(erofs_bytes) // frame_size)


def test_frames_without_content_size_and_huge_frames_are_streamed(erofs_bytes: bytes) -> None:
    sized = frames_of(erofs_bytes[:65536], 8192)
    unsized = frames_of(erofs_bytes[65536:131072], 16384, content_size=False)
    big = frames_of(erofs_bytes[131072:], 1 << 20)  # larger than max_frame below
    blob = b"".join([*sized[:3], *unsized[:2], *sized[3:], *unsized[2:], *big])
    expected = run_serial(blob)
    out, stats = run(blob, 2, max_frame=32768)
    assert out == expected
    assert stats.frames == len(sized) + len(unsized) + len(big)


def test_single_frame_starts_no_pool(erofs_bytes: bytes) -> None:
    blob = frames_of(erofs_bytes, len(erofs_bytes))[0]
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        decoder = ParallelDecoder(Source(f.fileno()), 4, 1 << 27, None, ZstdStats(), 64 << 20)
        names: set[str] = set()
        out = bytearray()
        for chunk in decoder.run():
            names |= {t.name for t in threading.enumerate()}
            out += chunk
    assert bytes(out) == erofs_bytes
    assert decoder.pool is None
    assert not any(name.startswith("zstd") for name in names)


class _Tracker:
    """A FrameObserver that measures how many frames are in flight at once."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.ends: list[int] = []

    def frame_start(self, index: int, offset: int) -> str | None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        return "sha512"

    def frame_end(
        self, index: int, end_offset: int, decompressed_size: int, digest: bytes | None
    ) -> None:
        assert digest is not None and len(digest) == 64
        self.open -= 1
        self.ends.append(index)

    def skippable(self, frame: SkippableFrame) -> None:
        pass

    def finish(self, total_out: int, end_offset: int) -> None:
        pass


@pytest.mark.parametrize("threads", [2, 3])
def test_frames_in_flight_stay_bounded(erofs_bytes: bytes, threads: int) -> None:
    """Memory bound: at most threads + 1 whole frames are held at any time."""
    blob = b"".join(frames_of(erofs_bytes * 4, 4096))
    tracker = _Tracker()
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        for _ in decode_zstd_parallel(Source(f.fileno()), threads=threads, observer=tracker):
            pass
    assert tracker.peak <= threads + 1
    assert tracker.ends == sorted(tracker.ends)
    assert tracker.open == 0


def test_corrupt_frame_is_named_after_the_good_ones(erofs_bytes: bytes) -> None:
    frames = frames_of(erofs_bytes, 16384)
    bad = bytearray(frames[4])
    bad[len(bad) // 2] ^= 0x40
    offset = sum(len(f) for f in frames[:4])
    blob = b"".join([*frames[:4], bytes(bad), *frames[5:]])
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        out = bytearray()
        with pytest.raises(DataError, match=f"frame at offset {offset}"):
            for chunk in decode_zstd_parallel(Source(f.fileno()), threads=2):
                out += chunk
    assert bytes(out) == erofs_bytes[: len(out)]
    assert len(out) <= 4 * 16384


@pytest.mark.parametrize("delta", [-1, 1])
def test_declared_content_size_must_match(delta: int) -> None:
    data = bytes(range(200))
    frame = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data))
    assert frame[4] & 0x20  # single segment: 1-byte content size right after the descriptor
    good = bytes(frame)
    frame[5] += delta
    for blob, offset in ((bytes(frame) + good, 0), (good + bytes(frame) * 2, len(good))):
        with pytest.raises(DataError, match=f"frame at offset {offset}"):
            run(blob, 2)  # the first frame is streamed, later ones are pooled


def test_padding_a_frame_with_empty_blocks_is_refused() -> None:
    """A pooled frame declaring 1 byte, then 40000 empty raw blocks: not buffered forever."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0x20]) + bytes([1])
    empty = (0 << 3 | 0 << 1 | 0).to_bytes(3, "little")
    last = (1 << 3 | 0 << 1 | 1).to_bytes(3, "little") + b"x"
    padded = header + empty * 40000 + last
    assert run_serial(padded) == b"x"  # valid zstd: streamed, block by block, it is fine
    first = zstandard.ZstdCompressor().compress(b"first")
    with pytest.raises(DataError, match="far larger than the 1 bytes it declares"):
        run(first + padded, 2)


def test_window_limit_applies_on_the_parallel_path(erofs_bytes: bytes) -> None:
    blob = b"".join(frames_of(erofs_bytes, 65536))
    with pytest.raises(DataError, match="window"):
        run(blob, 2, max_window_size=1024)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "input is empty"),
        (b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd", "only skippable frames"),
        (b"hello world, not zstd", "not zstd"),
    ],
)
def test_bad_streams(blob: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        run(blob, 2)


def test_truncation_and_trailing_garbage(erofs_bytes: bytes) -> None:
    blob = b"".join(frames_of(erofs_bytes, 16384))
    with pytest.raises(DataError, match="truncated"):
        run(blob[:-100], 2)
    with pytest.raises(DataError, match="trailing data"):
        run(blob + b"garbage!", 2)
    with pytest.raises(DataError, match="stray bytes"):
        run(blob + b"ab", 2)


def test_cli_threads_option(erofs_bytes: bytes) -> None:
    blob = b"".join(frames_of(erofs_bytes, 16384))
    for threads in ("1", "2", "5"):
        proc = run_cli(["--threads", threads], blob)
        assert proc.returncode == 0 and proc.stdout == erofs_bytes
    bad = run_cli(["--threads", "0"], blob)
    assert bad.returncode == 2 and b"at least 1" in bad.stderr


@pytest.mark.parametrize("max_frame", [1024, 16384, 1 << 20])
def test_table_verifies_whether_frames_are_streamed_or_pooled(
    erofs_bytes: bytes, max_frame: int
) -> None:
    from stream_processor.seekable import ChunkTableVerifier
    from tests.builders import pack_bytes, split

    blob, _ = pack_bytes(erofs_bytes)
    parts = split(blob)
    bad_table = bytearray(parts.table)
    bad_table[23 + 72 + 40] ^= 1  # chunk 1's hash
    for data, ok in ((blob, True), (b"".join(parts.frames) + _skippable(bytes(bad_table)), False)):
        verifier = ChunkTableVerifier()
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.seek(0)
            gen = decode_zstd_parallel(
                Source(f.fileno()), threads=2, observer=verifier, max_frame=max_frame
            )
            if ok:
                assert b"".join(gen) == erofs_bytes and verifier.verified
            else:
                with pytest.raises(DataError, match="chunk 1 "):
                    b"".join(gen)


def _skippable(payload: bytes) -> bytes:
    from stream_processor.seekable import skippable_frame

    return skippable_frame(payload)


def test_in_flight_output_is_budgeted_whatever_the_thread_count(
    monkeypatch: pytest.MonkeyPatch, erofs_bytes: bytes
) -> None:
    """--threads 64 must not hold 65 frames: the declared output in flight is capped."""
    import stream_processor.zstd_parallel as pz

    monkeypatch.setattr(pz, "IN_FLIGHT_BUDGET", 3 * 4096)
    blob = b"".join(frames_of(erofs_bytes, 4096))
    tracker = _Tracker()
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        out = b"".join(decode_zstd_parallel(Source(f.fileno()), threads=64, observer=tracker))
    assert out == erofs_bytes
    assert tracker.peak <= 4  # budget / frame size, plus the one being cut


def test_reader_going_away_ends_the_parallel_decode_quietly(erofs_bytes: bytes) -> None:
    """EPIPE while frames are in flight on the pool: exit 141, no message, no hang."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    cctx = zstandard.ZstdCompressor(write_checksum=True)
    blob = b"".join(frames_of(erofs_bytes, 65536)) + cctx.compress(bytes(1 << 20)) * 40
    env = {k: v for k, v in os.environ.items() if k != "STREAM_PROCESSOR_MEDIATYPE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_processor", "--threads", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feeder = threading.Thread(target=_feed, args=(proc.stdin, blob), daemon=True)
    feeder.start()
    assert len(proc.stdout.read(100_000)) == 100_000
    proc.stdout.close()
    assert proc.wait(timeout=30) == 141
    assert proc.stderr.read() == b""


def _feed(pipe: typing.IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except BrokenPipeError:
        pass
