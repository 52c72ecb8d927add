"""HoldbackSink: the tail stays back until release; EPIPE and ENOSPC become clear errors."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stream_processor.errors import InputOutputError, ReaderGone
from stream_processor.sink import DEFAULT_HOLD, RING, HoldbackSink

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


def _writing_threads(monkeypatch: pytest.MonkeyPatch, fd: int) -> list[threading.Thread]:
    """The threads that write to ``fd``, in order: with ``background=True`` the sink's
    writer thread, not the caller's (the real ``os.writev`` still does the writing)."""
    threads: list[threading.Thread] = []
    real = os.writev

    def writev(target: int, buffers: Sequence[ReadableBuffer]) -> int:
        if target == fd:
            threads.append(threading.current_thread())
        return real(target, buffers)

    monkeypatch.setattr(os, "writev", writev)
    return threads


def test_tail_is_held_until_release(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd, hold=1000, batch=4000)
    for _ in range(10):
        sink.write(b"x" * 900)
    written_before = out.stat().st_size
    assert 0 < written_before <= 9000 - 1000
    sink.release()
    os.close(fd)
    assert out.read_bytes() == b"x" * 9000 and sink.written == 9000


def test_small_output_is_written_only_on_release(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd)
    sink.write(b"abc")
    sink.write(memoryview(b"def"))
    assert out.stat().st_size == 0
    sink.release()
    os.close(fd)
    assert out.read_bytes() == b"abcdef"


def test_closed_reader_is_reader_gone() -> None:
    r, w = os.pipe()
    os.close(r)
    sink = HoldbackSink(w, hold=0, batch=1)
    with pytest.raises(ReaderGone):
        sink.write(b"data")
    os.close(w)


def test_full_device_is_an_io_error() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    sink = HoldbackSink(fd, hold=0, batch=1)
    with pytest.raises(InputOutputError, match="No space left on device"):
        sink.write(b"data")
    os.close(fd)


def test_background_writer_keeps_order_and_tail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd, hold=1000, batch=4000, background=True)
    chunks = [bytes([i]) * 900 for i in range(50)]
    for chunk in chunks:
        sink.write(chunk)
    sink.release()
    os.close(fd)
    assert out.read_bytes() == b"".join(chunks) and sink.written == 45000


@pytest.mark.parametrize(
    ("target", "error"), [("pipe", ReaderGone), ("/dev/full", InputOutputError)]
)
def test_background_write_errors_stop_the_decode(
    target: str, error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    if target == "pipe":
        r, fd = os.pipe()
        os.close(r)
    else:
        fd = os.open(target, os.O_WRONLY)
    writers = _writing_threads(monkeypatch, fd)
    sink = HoldbackSink(fd, hold=1, batch=1, background=True)
    with pytest.raises(error):
        for _ in range(100):  # the writer's error surfaces at a later batch or at release
            sink.write(b"data")
        sink.release()
    # the errors came through the writer thread
    assert writers and threading.current_thread() not in writers
    os.close(fd)


def _lend_and_fill(sink: HoldbackSink, data: bytes, step: int) -> list[object]:
    """Write ``data`` the way the zstd decoder does: fill a region lent by ``buffer``,
    then write the filled part of it. Returns the memory each lent region belongs to."""
    owners: list[object] = []
    for at in range(0, len(data), step):
        piece = data[at : at + step]
        region = sink.buffer(len(piece))
        owners.append(region.obj)
        n = min(len(region), len(piece))
        region[:n] = piece[:n]
        sink.write(region[:n])
        if n < len(piece):
            sink.write(piece[n:])
    return owners


def _one_ring(owners: list[object]) -> bool:
    """Every region was lent from one reused buffer of ``RING`` bytes: the sink's ring."""
    ring = owners[0]
    return isinstance(ring, bytearray) and len(ring) == RING and all(o is ring for o in owners)


def _pattern(size: int) -> bytes:
    return b"".join(i.to_bytes(4, "little") for i in range(size // 4))


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("step", [1000, 128 * 1024, 200_000])
def test_ring_keeps_bytes_order_and_tail(
    tmp_path: Path, step: int, background: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regions of the ring are lent, held back, written and lent again: the output is the
    input, and before release nothing of the last ``hold`` bytes has been written."""
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    writers = _writing_threads(monkeypatch, fd)
    sink = HoldbackSink(fd, background=background)
    data = _pattern(5 << 20)
    owners = _lend_and_fill(sink, data, step)
    deadline = time.monotonic() + 10
    while sink.written == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # let the writer thread write some of what it was handed
    assert 0 < out.stat().st_size <= len(data) - DEFAULT_HOLD
    assert _one_ring(owners)  # the decoder filled the sink's own ring, over and over
    # every write so far by the writer thread (background) or by the caller (not)
    assert {t is threading.current_thread() for t in writers} == {not background}
    sink.release()
    os.close(fd)
    assert out.read_bytes() == data and sink.written == len(data) == sink.received


def test_ring_waits_for_a_slow_reader(tmp_path: Path) -> None:
    """A reader slower than the decoder: the ring fills with bytes the writer thread has
    not written yet, and ``buffer`` waits for them instead of lending them again."""
    r, w = os.pipe()
    received = bytearray()

    def slow_reader() -> None:
        while piece := os.read(r, 64 * 1024):
            received.extend(piece)
            time.sleep(0.001)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    sink = HoldbackSink(w, background=True)
    data = _pattern(8 << 20)
    ring = sink.buffer(1).obj
    lent_elsewhere = 0
    step = 128 * 1024
    for at in range(0, len(data), step):
        region = sink.buffer(step)
        lent_elsewhere += region.obj is not ring
        region[:] = data[at : at + len(region)]
        sink.write(region)
        if len(region) < step:
            sink.write(data[at + len(region) : at + step])
    sink.release()
    os.close(w)
    reader.join()
    os.close(r)
    # 8 MiB through a 1 MiB ring to a reader far slower than the loop: the ring was full
    # of unwritten bytes many times, and each time ``buffer`` waited for the writer
    # rather than lend fresh memory.
    assert bytes(received) == data and lent_elsewhere == 0


def test_a_region_lent_again_before_it_was_written_is_reused(tmp_path: Path) -> None:
    """A caller that keeps what it decompressed (the gate, before the superblock) copies it,
    and the region it never wrote is lent again."""
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd)
    first = sink.buffer(100)
    first[:5] = b"first"
    kept = bytes(first[:5])
    again = sink.buffer(100)
    assert again.obj is first.obj and len(again) == 100
    again[:5] = b"again"
    sink.write(kept)
    sink.write(again[:5])
    sink.release()
    os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"firstagain"


def test_ring_view_not_just_lent_is_copied(tmp_path: Path) -> None:
    """Ring memory written without a ``buffer`` call before it (the lent region was
    written already) is copied, never queued: the ring may be lent again meanwhile."""
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd)
    region = sink.buffer(10)
    region[:8] = b"one!two!"
    sink.write(region[:4])
    sink.write(region[4:8])  # not lent: copied
    following = sink.buffer(10)
    following[:4] = b"3333"  # where "two!" was, had it been queued in place
    sink.write(following[:4])
    sink.release()
    os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"one!two!3333"


def test_full_ring_lends_new_buffers(tmp_path: Path) -> None:
    """With more held back than the ring holds, ``buffer`` lends fresh memory instead of
    reusing ring bytes that have not reached stdout."""
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd, hold=3 * RING)
    data = _pattern(2 * RING)
    _lend_and_fill(sink, data, 128 * 1024)
    assert out.stat().st_size == 0
    sink.release()
    os.close(fd)
    assert out.read_bytes() == data


def test_ring_after_bytes_waits_for_the_writer_thread(tmp_path: Path) -> None:
    """Bytes handed to the writer thread (pooled frames) and ring bytes written here reach
    stdout in the order they were written to the sink."""
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd, hold=1000, batch=4000, background=True)
    expected = []
    for i in range(40):
        chunk = bytes([i]) * 3000
        expected.append(chunk)
        if i % 3:
            sink.write(chunk)
        else:
            _lend_and_fill(sink, chunk, 3000)
    sink.release()
    os.close(fd)
    assert out.read_bytes() == b"".join(expected)


def test_abort_writes_nothing_more_from_the_ring(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd)
    _lend_and_fill(sink, _pattern(2 << 20), 128 * 1024)
    before = out.stat().st_size
    sink.abort()
    sink.release()  # nothing queued any more
    os.close(fd)
    assert out.stat().st_size == before <= (2 << 20) - DEFAULT_HOLD
