"""HoldbackSink: the tail stays back until release; EPIPE and ENOSPC become clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stream_processor.errors import InputOutputError, ReaderGone
from stream_processor.sink import HoldbackSink


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
def test_background_write_errors_stop_the_decode(target: str, error: type[Exception]) -> None:
    if target == "pipe":
        r, fd = os.pipe()
        os.close(r)
    else:
        fd = os.open(target, os.O_WRONLY)
    sink = HoldbackSink(fd, hold=1, batch=1, background=True)
    with pytest.raises(error):
        for _ in range(100):  # the writer's error surfaces at a later batch or at release
            sink.write(b"data")
        sink.release()
    assert sink._writer is not None  # the errors came through the writer thread
    os.close(fd)
