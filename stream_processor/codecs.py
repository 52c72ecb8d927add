"""Which compression a stream uses, from its first bytes, and the decoder for it.

Detection reads only the magic numbers (``framing``); a codec module is
imported when it is chosen, so a gzip layer never loads zstandard.
"""

from __future__ import annotations

from stream_processor.framing import GZIP_MAGIC, GzipStats, ZstdStats, is_zstd_start
from stream_processor.mediatypes import Compression
from stream_processor.source import READ_SIZE, Source

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from collections.abc import Iterator

    from stream_processor.zstd_codec import FrameObserver, Output


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
    threads: int = 1,
    out: Output | None = None,
    observer: FrameObserver | None = None,
    zstd_stats: ZstdStats | None = None,
    gzip_stats: GzipStats | None = None,
) -> Iterator[bytes | memoryview]:
    """The decompressed stream of ``src`` for the given compression: decode and inspect
    both get their codec here (``decode.decompress``).

    zstd with ``threads > 1`` decodes independent frames on that many threads
    (``zstd_parallel``); a streamed zstd frame is decompressed into buffers from
    ``out`` (views valid until the next chunk is asked for), or without ``out`` into
    ``bytes`` of its own. Other codecs always yield ``bytes``.
    """
    if compression is Compression.GZIP:
        from stream_processor.gzip_codec import decode_gzip

        return decode_gzip(src, gzip_stats)
    if compression is not Compression.ZSTD:
        return copy_raw(src)
    from stream_processor.zstd_codec import as_bytes, decode_zstd_into, reused_output

    into = out if out is not None else reused_output()
    chunks: Iterator[bytes | memoryview]
    if threads > 1:
        from stream_processor.zstd_parallel import decode_zstd_parallel_into

        chunks = decode_zstd_parallel_into(
            src,
            into,
            threads=threads,
            max_window_size=max_window_size,
            observer=observer,
            stats=zstd_stats,
        )
    else:
        chunks = decode_zstd_into(
            src, into, max_window_size=max_window_size, observer=observer, stats=zstd_stats
        )
    return chunks if out is not None else as_bytes(chunks)
