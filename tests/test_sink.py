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
