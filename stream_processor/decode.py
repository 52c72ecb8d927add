"""The main job: compressed layer in, validated raw EROFS (or exact tar) out, one pass.

stdin -> ``Source`` -> codec (``compression.decoder``) -> ``ImageGate``
(superblock, completeness) -> ``HoldbackSink`` -> stdout. The sink releases
the held-back tail only after the codec reached the end of input cleanly
and the gate's final checks passed.
"""

from __future__ import annotations

from stream_processor import codecs, mediatypes
from stream_processor.errors import DataError, ReaderGone, Terminated
from stream_processor.framing import DEFAULT_MAX_WINDOW, ZstdStats
from stream_processor.mediatypes import Compression, Payload
from stream_processor.sink import HoldbackSink, widen_pipe
from stream_processor.source import Source
from stream_processor.validator import DEFAULT_MAX_OUTPUT, ImageGate, Kind, Verdict, describe

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from collections.abc import Iterator

    from stream_processor.seekable import ChunkTableVerifier
    from stream_processor.zstd_codec import Output

# With ``tune_malloc``, glibc's allocator is tuned (``zstd_parallel.tune_malloc``) once
# this much output has gone by: every ~1 MiB output chunk was otherwise faulted in afresh
# (measured: about half the page faults and 5-8 % less CPU for a 563 MB layer fed and
# drained as containerd does), while a small layer never pays for importing ctypes.
TUNE_MALLOC_AFTER = 8 << 20

# Plain classes, not dataclasses, on the decode path: importing ``dataclasses``
# (and the ``inspect`` it pulls in) costs ~7 ms of every layer's start-up.


class DecodeOptions:
    """Knobs of one decode. ``media_type=None`` means detect the compression."""

    def __init__(
        self,
        media_type: str | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
        max_window_size: int = DEFAULT_MAX_WINDOW,
        threads: int = 1,  # > 1: independent zstd frames decode on this many threads
        verify_dm_verity: bool = False,  # recompute a dm-verity frame's tree (spools the image)
        verify_frame_hashes: bool = False,  # check a chunk table's per-frame SHA-512s
        tune_malloc: bool = False,  # one layer per process (the CLI): see TUNE_MALLOC_AFTER
    ) -> None:
        self.media_type = media_type
        self.max_output_bytes = max_output_bytes
        self.max_window_size = max_window_size
        self.threads = threads
        self.verify_dm_verity = verify_dm_verity
        self.verify_frame_hashes = verify_frame_hashes
        self.tune_malloc = tune_malloc


class DecodeResult:
    """What was decoded; the log record is made from this.

    ``bytes_in`` and ``bytes_out`` are read live from the source and the sink,
    so a record written after a failure or SIGTERM says what was actually
    read from stdin and what actually reached stdout (not what was decoded
    and held back).
    """

    def __init__(self, media_type: str | None) -> None:
        self.media_type = media_type
        self.compression: Compression | None = None
        self.source: Source | None = None
        self.sink: HoldbackSink | None = None
        self.verdict: Verdict | None = None
        self.zstd = ZstdStats()
        self.notes: list[str] = []

    @property
    def bytes_in(self) -> int:
        """Bytes read from the input descriptor."""
        return self.source.bytes_read if self.source is not None else 0

    @property
    def bytes_out(self) -> int:
        """Bytes written to the output descriptor."""
        return self.sink.written if self.sink is not None else 0


def _check_compression(route: mediatypes.Route, found: Compression, head: bytes) -> Compression:
    declared = route.compression
    if declared is None or declared is found:
        return found
    what = found.value if found is not Compression.NONE else describe(head)
    raise DataError(f"media type {route.media_type} says {declared.value}, but the data is {what}")


def _chunks(
    src: Source, result: DecodeResult, options: DecodeOptions, out: Output
) -> Iterator[bytes | memoryview]:
    """The codec for the stream: zstd gets the chunk-table verifier, and with
    ``threads > 1`` the parallel frame decoder (imported only then); a streamed
    zstd frame is decompressed into buffers from ``out``. The zstd modules are
    imported here, once zstd is chosen: a gzip layer never loads them."""
    assert result.compression is not None
    if result.compression is not Compression.ZSTD:
        return codecs.decoder(result.compression, src, max_window_size=options.max_window_size)
    from stream_processor.seekable import ChunkTableVerifier
    from stream_processor.zstd_codec import as_bytes

    spool = None
    if options.verify_dm_verity:
        from stream_processor.dmverity import ImageSpool

        spool = ImageSpool()
    observer = ChunkTableVerifier(result.notes, spool, hash_frames=options.verify_frame_hashes)
    chunks = _zstd_chunks(src, result, options, observer, out)
    # The spool is a file: copies cost nothing next to it, and it needs bytes.
    return spool.tee(as_bytes(chunks)) if spool is not None else chunks


def _zstd_chunks(
    src: Source,
    result: DecodeResult,
    options: DecodeOptions,
    observer: ChunkTableVerifier,
    out: Output,
) -> Iterator[bytes | memoryview]:
    if options.threads > 1:
        from stream_processor.zstd_parallel import decode_zstd_parallel_into

        return decode_zstd_parallel_into(
            src,
            out,
            threads=options.threads,
            max_window_size=options.max_window_size,
            observer=observer,
            stats=result.zstd,
        )
    from stream_processor.zstd_codec import decode_zstd_into

    return decode_zstd_into(
        src, out, max_window_size=options.max_window_size, observer=observer, stats=result.zstd
    )


def decode(in_fd: int, out_fd: int, options: DecodeOptions, result: DecodeResult) -> None:
    """Decode ``in_fd`` to ``out_fd``; fill ``result``; raise on any failure.

    ``result`` is passed in (not returned) so that a caller logging a failure
    still sees how far the decode got.
    """
    route = mediatypes.resolve(options.media_type)
    # Both pipes to 1 MiB: containerd writes stdin 32 KiB at a time from a goroutine and
    # reads stdout 32 KiB at a time (docs/stream-processor-contract.md); with 64 KiB pipes
    # every read here took at most 64 KiB and woke the writer (a third fewer context
    # switches per layer with the wider pipe, measured with the benchmarks' harness).
    widen_pipe(in_fd)
    src = result.source = Source(in_fd)
    head = bytes(src.peek(4096))
    if not head:
        raise DataError("input is empty")
    result.compression = _check_compression(route, codecs.detect(head), head)
    widen_pipe(out_fd)
    sink = result.sink = HoldbackSink(out_fd, background=True)
    payload = route.payload
    if route.compression is None and result.compression is Compression.NONE:
        payload = Payload.EROFS
    gate = ImageGate(sink, payload, options.max_output_bytes)
    tune_at = TUNE_MALLOC_AFTER if options.tune_malloc else -1
    try:
        for chunk in _chunks(src, result, options, sink.buffer):
            if not sink.received:
                # Until it has judged the image's first bytes the gate keeps them, and a
                # chunk decompressed into the sink's ring is lent memory: keep a copy.
                chunk = bytes(chunk)
            gate.feed(chunk)
            if 0 <= tune_at < gate.size:
                from stream_processor.zstd_parallel import tune_malloc

                tune_malloc()
                tune_at = -1
        verdict = result.verdict = gate.finish()
    except (Terminated, ReaderGone):
        sink.abort(timeout=0)  # stop now: containerd is gone or wants us gone
        raise
    except BaseException:
        sink.abort()  # nothing more reaches stdout; bytes_out is then what did
        raise
    if verdict.kind is Kind.EROFS and verdict.extra_bytes:
        result.notes.append(f"{verdict.extra_bytes} bytes follow the EROFS image")
    sink.release()
