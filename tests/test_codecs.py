"""``codecs``: which compression a stream uses, from its first bytes, and its decoder.

Streams are real: the mkfs.erofs sample image compressed by python-zstandard
(libzstd), by ``pack`` (a seekable blob that starts with a skippable frame
when asked) and by Python's ``gzip``; a GNU tar layer stands for raw data
that is not EROFS.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
from collections.abc import Callable

import pytest
import zstandard

from stream_processor import seekable
from stream_processor.codecs import copy_raw, decoder, detect
from stream_processor.framing import DEFAULT_MAX_WINDOW, ZstdStats
from stream_processor.mediatypes import Compression
from stream_processor.source import READ_SIZE, Source
from tests.builders import pack_bytes
from tests.processor import ROOT, processor_env

SourceOf = Callable[[bytes], Source]


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"node\n"))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("wrap", "expected"),
    [
        (lambda img: zstandard.ZstdCompressor().compress(img), Compression.ZSTD),
        (lambda img: seekable.skippable_frame(b"x") + pack_bytes(img)[0], Compression.ZSTD),
        (lambda img: gzip.compress(img, mtime=0), Compression.GZIP),
        (lambda img: img, Compression.NONE),
        (lambda img: _tar(), Compression.NONE),
        (lambda img: b"\x28\xb5\x2f", Compression.NONE),  # a zstd magic cut short
        (lambda img: b"\x1f", Compression.NONE),
        (lambda img: b"", Compression.NONE),
    ],
    ids=["zstd", "skippable-first", "gzip", "erofs", "tar", "short-zstd", "short-gzip", "empty"],
)
def test_detect_reads_the_magic(
    erofs_bytes: bytes, wrap: Callable[[bytes], bytes], expected: Compression
) -> None:
    head = wrap(erofs_bytes)[:8]
    assert detect(head) is expected
    assert detect(memoryview(head)) is expected


@pytest.mark.parametrize(
    "compression",
    [Compression.ZSTD, Compression.GZIP, Compression.NONE],
    ids=["zstd", "gzip", "none"],
)
def test_decoder_for_each_compression_gives_the_image(
    erofs_bytes: bytes, source_of: SourceOf, compression: Compression
) -> None:
    blob = {
        Compression.ZSTD: pack_bytes(erofs_bytes)[0],
        Compression.GZIP: gzip.compress(erofs_bytes, mtime=0),
        Compression.NONE: erofs_bytes,
    }[compression]
    assert detect(blob[:4]) is compression
    stats = ZstdStats()
    out = decoder(
        compression, source_of(blob), max_window_size=DEFAULT_MAX_WINDOW, zstd_stats=stats
    )
    assert b"".join(out) == erofs_bytes
    if compression is Compression.ZSTD:  # the stats it was given are the ones filled in
        assert stats.out_bytes == len(erofs_bytes) and stats.frames > 1


def test_copy_raw_is_the_input_in_bounded_pieces(source_of: SourceOf) -> None:
    data = bytes(range(256)) * (3 * READ_SIZE // 256 + 7)
    pieces = list(copy_raw(source_of(data)))
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= READ_SIZE for p in pieces) and len(pieces) >= 4
    assert list(copy_raw(source_of(b""))) == []


@pytest.mark.parametrize(
    ("compression", "loaded", "absent"),
    [
        (Compression.ZSTD, "stream_processor.zstd_codec", ("isal", "stream_processor.gzip_codec")),
        (
            Compression.NONE,
            "stream_processor.codecs",
            ("zstandard", "isal", "stream_processor.zstd_codec", "stream_processor.gzip_codec"),
        ),
    ],
)
def test_a_codec_is_imported_only_when_chosen(
    compression: Compression, loaded: str, absent: tuple[str, ...]
) -> None:
    """``decoder`` imports the chosen codec only: a zstd layer never loads ISA-L, a raw one
    no codec. Checked in a fresh interpreter, whose modules are its own. (That a gzip layer
    never loads zstandard is checked through the whole CLI: test_cli.)"""
    script = (
        "import os, sys\n"
        "from stream_processor.codecs import decoder\n"
        "from stream_processor.mediatypes import Compression\n"
        "from stream_processor.source import Source\n"
        f"decoder(Compression.{compression.value.upper()}, Source(0), max_window_size=1 << 27)\n"
        f"print(' '.join(m for m in {(loaded, *absent)!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=processor_env(),
        cwd=ROOT,
        check=True,
    )
    assert proc.stdout.split() == [loaded]
