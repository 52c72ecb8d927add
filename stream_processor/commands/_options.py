"""Options and signal handling shared by ``pack`` and ``convert``.

One definition of each option, so both commands accept and refuse the same
values with the same words: sizes and thread counts are checked by argparse
(a bad one is a one-line usage error, exit 2, before any file is touched);
a level is checked against its codec as soon as the codec is known, also
before anything is written. ``parse_size`` and the thread-count parser are
the decoder's own (``commands.decode``), reused rather than copied.

``unwinds_on_signals`` (from ``stream_processor.signals``, re-exported here)
makes SIGTERM, SIGHUP and SIGINT unwind a command so its temporaries are
removed.
"""

from __future__ import annotations

import argparse
import os

from stream_processor import seekable
from stream_processor.commands.decode import parse_size, parse_threads
from stream_processor.errors import UsageError
from stream_processor.mediatypes import Compression
from stream_processor.signals import SIGNALS, Signalled, unwinds_on_signals
from stream_processor.sizes import human

__all__ = [
    "LEVELS",
    "SIGNALS",
    "Signalled",
    "add_chunk_size_argument",
    "add_compression_arguments",
    "add_mkfs_argument",
    "add_threads_argument",
    "check_level",
    "parse_chunk_size",
    "parse_jobs",
    "parse_size",
    "parse_threads",
    "unwinds_on_signals",
]

# What each codec accepts: zstd's levels 1..22 (python-zstandard and ``zstd -#``),
# gzip's 0..9 (0-3 ISA-L, 4-9 zlib, see ``pack._pack_gzip``); ``none`` has no level.
LEVELS: dict[Compression, tuple[int, int]] = {
    Compression.ZSTD: (1, 22),
    Compression.GZIP: (0, 9),
}


def check_level(compression: Compression, level: int | None) -> int | None:
    """``level`` if ``compression`` accepts it; a usage error naming the valid range if not."""
    if level is None:
        return None
    if compression not in LEVELS:
        raise UsageError(f"--level does not apply to --compression {compression.value}")
    low, high = LEVELS[compression]
    if not low <= level <= high:
        raise UsageError(
            f"--level {level} is out of range for {compression.value}: use {low}..{high}"
        )
    return level


def parse_chunk_size(text: str) -> int:
    """A ``--chunk-size``: a size within what the seekable layout allows (4 KiB..64 MiB)."""
    value = parse_size(text)
    if not seekable.MIN_CHUNK_SIZE <= value <= seekable.MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"chunk size {text!r} is outside {human(seekable.MIN_CHUNK_SIZE)}.."
            f"{human(seekable.MAX_CHUNK_SIZE)}"
        )
    return value


def parse_jobs(text: str) -> int:
    """``convert --jobs N``: N >= 1 as for ``--threads``, in the words of layers."""
    try:
        return parse_threads(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"layers at once must be 1 or more (default: CPU count): {text!r}"
        ) from None


def add_compression_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--compression``, ``--level``, ``--chunk-size``, ``--no-chunk-table``."""
    parser.add_argument(
        "--compression",
        choices=[c.value for c in Compression.all()],
        default="zstd",
        help=f"how {what} compressed: zstd (default; seekable, see --chunk-size), gzip, "
        "or none (the raw EROFS image as the blob)",
    )
    zstd_low, zstd_high = LEVELS[Compression.ZSTD]
    gzip_low, gzip_high = LEVELS[Compression.GZIP]
    parser.add_argument(
        "--level",
        type=int,
        help=f"compression level: zstd {zstd_low}..{zstd_high} (default 3), "
        f"gzip {gzip_low}..{gzip_high} (0-3 ISA-L, default 2; 4-9 zlib)",
    )
    add_chunk_size_argument(parser)
    parser.add_argument(
        "--no-chunk-table",
        action="store_true",
        help="plain single-stream zstd instead of the seekable layout",
    )


def add_chunk_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        type=parse_chunk_size,
        metavar="SIZE",
        help=f"zstd chunk size of the seekable layout, {human(seekable.MIN_CHUNK_SIZE)}.."
        f"{human(seekable.MAX_CHUNK_SIZE)} (default 4MiB; 4096, 512KiB, 4M, ... )",
    )


def add_threads_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--threads N``, N >= 1, refused otherwise as the decoder refuses it."""
    parser.add_argument("--threads", type=parse_threads, default=1, metavar="N", help=help_text)


def add_mkfs_argument(parser: argparse.ArgumentParser) -> None:
    """``--mkfs PATH``, default ``$EROFS_SP_MKFS`` or ``mkfs.erofs`` on PATH.

    Resolved by ``convert.erofsbuild.find_mkfs`` (which also reads its version).
    """
    parser.add_argument(
        "--mkfs",
        default=os.environ.get("EROFS_SP_MKFS") or "mkfs.erofs",
        metavar="PATH",
        help="the mkfs.erofs to run (default: $EROFS_SP_MKFS, else mkfs.erofs on PATH)",
    )
