"""``gzip_codec.decode_gzip``: every member decoded and checked, output in bounded pieces.

The layers are the real mkfs.erofs sample image compressed by GNU ``gzip`` and
by Python's ``gzip`` module; each test runs with ISA-L (the usual backend) and
with the stdlib ``zlib`` fallback that takes over when ``isal`` is missing.
The decoder's behaviour through the CLI is test_decode's.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from collections.abc import Callable

import pytest

from stream_processor.errors import DataError
from stream_processor.framing import FRAME_ALLOWANCE
from stream_processor.gzip_codec import OUT_STEP, GzipStats, decode_gzip
from stream_processor.source import Source
from tests.conftest import require_tool

SourceOf = Callable[[bytes], Source]


@pytest.fixture(params=["isal", "zlib"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend the decoder will pick: ISA-L, or zlib when ``isal`` cannot be imported."""
    if request.param == "zlib":
        monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import ...` fails
    return str(request.param)


def _gnu_gzip(data: bytes) -> bytes:
    require_tool("gzip")
    return subprocess.run(["gzip", "-n", "-c"], input=data, capture_output=True, check=True).stdout


def _decode(src: Source, stats: GzipStats | None = None) -> bytes:
    return b"".join(decode_gzip(src, stats))


def test_one_member_from_gnu_gzip(erofs_bytes: bytes, source_of: SourceOf, backend: str) -> None:
    stats = GzipStats()
    assert _decode(source_of(_gnu_gzip(erofs_bytes)), stats) == erofs_bytes
    assert (stats.members, stats.out_bytes, stats.backend) == (1, len(erofs_bytes), backend)


def test_members_are_decoded_in_order(
    erofs_bytes: bytes, source_of: SourceOf, backend: str
) -> None:
    """``pigz``/``cat a.gz b.gz``: several members make one stream, each checked on its own."""
    third = len(erofs_bytes) // 3
    parts = [erofs_bytes[:third], erofs_bytes[third : 2 * third], erofs_bytes[2 * third :]]
    blob = _gnu_gzip(parts[0]) + gzip.compress(parts[1], mtime=0) + _gnu_gzip(parts[2])
    stats = GzipStats()
    assert _decode(source_of(blob), stats) == erofs_bytes
    assert stats.members == 3 and stats.out_bytes == len(erofs_bytes)


def test_output_comes_in_bounded_pieces(source_of: SourceOf, backend: str) -> None:
    """A bomb (64 MiB of zeros in ~64 KiB) never allocates more than ``OUT_STEP`` at once."""
    blob = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    assert len(blob) < 1 << 20
    total = 0
    for piece in decode_gzip(source_of(blob)):
        assert 0 < len(piece) <= OUT_STEP
        total += len(piece)
    assert total == 64 << 20


def _corrupt_crc(member: bytes) -> bytes:
    data = bytearray(member)
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    return bytes(data)


def _wrong_isize(member: bytes) -> bytes:
    data = bytearray(member)
    data[-4] ^= 0x01  # the ISIZE in the trailer
    return bytes(data)


def _reserved_flag(member: bytes) -> bytes:
    data = bytearray(member)
    data[3] |= 0x20  # FLG bit 5: reserved in RFC 1952
    return bytes(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: b"", "input is empty"),
        (lambda m: b"\x28\xb5\x2f\xfd" + m, "input is not gzip (no gzip magic at the start)"),
        (lambda m: m[:-100], "gzip: the input ends inside a member (truncated)"),
        (lambda m: m[:10], "gzip: the input ends inside a member (truncated)"),
        (_corrupt_crc, "gzip: corrupt member at offset 0: "),
        (_wrong_isize, "gzip: corrupt member at offset 0: "),
        (_reserved_flag, "gzip: member at offset 0 sets reserved header flags"),
    ],
    ids=["empty", "zstd", "truncated", "header-only", "crc32", "isize", "reserved-flags"],
)
def test_bad_input_is_a_data_error(
    erofs_bytes: bytes,
    source_of: SourceOf,
    backend: str,
    make: Callable[[bytes], bytes],
    message: str,
) -> None:
    with pytest.raises(DataError) as caught:
        _decode(source_of(make(_gnu_gzip(erofs_bytes))))
    assert str(caught.value).startswith(message), caught.value


def test_bad_second_member_names_its_offset(
    erofs_bytes: bytes, source_of: SourceOf, backend: str
) -> None:
    first = _gnu_gzip(erofs_bytes)
    with pytest.raises(DataError, match=f"^gzip: corrupt member at offset {len(first)}: "):
        _decode(source_of(first + _corrupt_crc(first)))
    with pytest.raises(DataError, match=f"^gzip: member at offset {len(first)} sets reserved"):
        _decode(source_of(first + _reserved_flag(first)))


def test_trailing_data_is_not_a_member(
    erofs_bytes: bytes, source_of: SourceOf, backend: str
) -> None:
    """Bytes after the last member (padding, a second archive format) are refused, not
    silently dropped: what follows would be part of the layer."""
    member = _gnu_gzip(erofs_bytes)
    expected = f"gzip: trailing data at offset {len(member)} is not a gzip member"
    for tail in (b"\0" * 512, b"garbage", zlib.compress(b"x")):
        with pytest.raises(DataError, match=f"^{expected}$"):
            _decode(source_of(member + tail))


def test_a_stream_of_empty_members_is_refused(source_of: SourceOf, backend: str) -> None:
    """A framing bomb: each empty member costs Python work and yields nothing."""
    empty = gzip.compress(b"", mtime=0)
    stats = GzipStats()
    with pytest.raises(DataError, match=r"^gzip: \d+ members for only 0 bytes of output"):
        _decode(source_of(empty * (FRAME_ALLOWANCE + 10)), stats)
    assert stats.members == FRAME_ALLOWANCE + 1
    # as many as the allowance are fine
    assert _decode(source_of(empty * FRAME_ALLOWANCE)) == b""
