"""ImageGate: what counts as EROFS or tar, and when bytes may pass."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from stream_processor.errors import DataError
from stream_processor.mediatypes import Payload
from stream_processor.sink import HoldbackSink
from stream_processor.validator import ImageGate, Kind, is_tar_header


def _gate(tmp_path: Path, payload: Payload) -> tuple[ImageGate, HoldbackSink, Path, int]:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = HoldbackSink(fd, hold=0, batch=1)
    return ImageGate(sink, payload), sink, out, fd


def test_nothing_passes_before_the_superblock(tmp_path: Path, erofs_bytes: bytes) -> None:
    gate, sink, out, fd = _gate(tmp_path, Payload.EROFS)
    gate.feed(erofs_bytes[:2000])  # magic visible, but not the whole first block
    assert out.stat().st_size == 0
    gate.feed(erofs_bytes[2000:])
    verdict = gate.finish()
    sink.release()
    os.close(fd)
    assert verdict.kind is Kind.EROFS and out.read_bytes() == erofs_bytes


def test_byte_at_a_time(tmp_path: Path, erofs_bytes: bytes) -> None:
    gate, _, _, fd = _gate(tmp_path, Payload.EROFS)
    for i in range(0, 5000):
        gate.feed(erofs_bytes[i : i + 1])
    gate.feed(erofs_bytes[5000:])
    assert gate.finish().size == len(erofs_bytes)
    os.close(fd)


def test_tar_header_detection(sample_tree: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(sample_tree / "etc", arcname="etc")
    assert is_tar_header(buf.getvalue()[:512])
    assert is_tar_header(b"\0" * 512)
    assert not is_tar_header(b"x" * 512)
    assert not is_tar_header(b"\0" * 100)


def test_short_erofs_is_truncated(tmp_path: Path, erofs_bytes: bytes) -> None:
    gate, _, out, fd = _gate(tmp_path, Payload.EROFS)
    gate.feed(erofs_bytes[:1500])
    with pytest.raises(DataError, match="truncated EROFS image"):
        gate.finish()
    assert out.stat().st_size == 0
    os.close(fd)


def test_output_limit(tmp_path: Path, erofs_bytes: bytes) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    gate = ImageGate(HoldbackSink(fd), Payload.EROFS, max_output=len(erofs_bytes) - 1)
    with pytest.raises(DataError, match="exceeds the limit"):
        gate.feed(erofs_bytes)
    os.close(fd)
