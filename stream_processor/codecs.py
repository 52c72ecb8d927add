"""Which compression a stream uses, from its first bytes, and the decoder for it.

Detection reads only the magic numbers (``framing``); a codec module is
imported when it is chosen, so a gzip layer never loads zstandard.
"""

from __future__ import annotations

from stream_processor.framing import GZIP_MAGIC, ZstdStats, is_zstd_start
from stream_processor.mediatypes import Compression
from stream_processor.source import READ_SIZE, Source

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from collections.abc import Iterator

    from stream_processor.zstd_codec import FrameObserver


def detect(head: bytes | memoryview) -> Compression:
    """zstd (a frame or a skippable frame), gzip, or none (raw bytes)."""
    if is_zstd_start(head):
        return Compression.ZSTD
    if bytes(head[:2]) == GZIP_MAGIC:
        return Compression.GZIP
    return Compression.NONE


def copy_raw(src: Source) -> Iterator[bytes]:
    """The 'none' codec: the input as it is, in bounded pieces."""
    while True:
        view = src.read_some(READ_SIZE)
        if not view:
            return
        yield bytes(view)


def decoder(
    compression: Compression,
    src: Source,
    *,
    max_window_size: int,
    observer: FrameObserver | None = None,
    zstd_stats: ZstdStats | None = None,
) -> Iterator[bytes]:
    """The decompressed stream of ``src`` for the given compression."""
    if compression is Compression.ZSTD:
        from stream_processor.zstd_codec import decode_zstd

        return decode_zstd(
            src, max_window_size=max_window_size, observer=observer, stats=zstd_stats
        )
    if compression is Compression.GZIP:
        from stream_processor.gzip_codec import decode_gzip

        return decode_gzip(src)
    return copy_raw(src)
