"""The main job: compressed layer in, validated raw EROFS (or exact tar) out, one pass.

stdin -> ``Source`` -> codec (``decompress``) -> ``ImageGate`` (superblock,
completeness) -> ``HoldbackSink`` -> stdout. The sink releases the held-back
tail only after the codec reached the end of input cleanly and the gate's
final checks passed.
"""

from __future__ import annotations

from stream_processor import codecs, mediatypes
from stream_processor.errors import DataError, ReaderGone, Terminated
from stream_processor.framing import DEFAULT_MAX_WINDOW, GzipStats, ZstdStats
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
# (README "Performance"), while a small layer never pays for importing ctypes.
TUNE_MALLOC_AFTER = 8 << 20

# Plain classes, not dataclasses, on the decode path: importing ``dataclasses`` (and the
# ``inspect`` it pulls in) would be every layer's start-up (README "Performance").


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
        self.gzip = GzipStats()
        self.verifier: ChunkTableVerifier | None = None  # zstd: what checked the framing
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


def expected_payload(route: mediatypes.Route, found: Compression) -> Payload:
    """What the decompressed data must be: the route's payload, except that input whose
    compression was detected (not declared) and is none is a raw EROFS image."""
    if route.compression is None and found is Compression.NONE:
        return Payload.EROFS
    return route.payload


def decompress(
    src: Source,
    result: DecodeResult,
    options: DecodeOptions,
    out: Output | None = None,
    keep_errors: bool = False,
) -> Iterator[bytes | memoryview]:
    """The decompressed stream, set up as decode and ``inspect`` both run it.

    The codec is ``codecs.decoder``'s for ``result.compression`` (zstd frames
    decompressed into buffers from ``out``; without it, every chunk is ``bytes``).
    zstd gets the chunk-table verifier (``result.verifier``; ``keep_errors``: see
    ``ChunkTableVerifier``) and with ``verify_dm_verity`` a spool of the image for
    the tree. The zstd modules are imported once zstd is chosen: a gzip layer never
    loads them.
    """
    assert result.compression is not None
    spool = None
    if result.compression is Compression.ZSTD:
        from stream_processor.seekable import ChunkTableVerifier

        if options.verify_dm_verity:
            from stream_processor.dmverity import ImageSpool

            spool = ImageSpool()
        result.verifier = ChunkTableVerifier(
            result.notes, spool, hash_frames=options.verify_frame_hashes, keep_errors=keep_errors
        )
    chunks = codecs.decoder(
        result.compression,
        src,
        max_window_size=options.max_window_size,
        threads=options.threads,
        out=out,
        observer=result.verifier,
        zstd_stats=result.zstd,
        gzip_stats=result.gzip,
    )
    if spool is None:
        return chunks
    from stream_processor.zstd_codec import as_bytes

    # The spool is a file: copies cost nothing next to it, and it needs bytes.
    return spool.tee(as_bytes(chunks))


def decode(in_fd: int, out_fd: int, options: DecodeOptions, result: DecodeResult) -> None:
    """Decode ``in_fd`` to ``out_fd``; fill ``result``; raise on any failure.

    ``result`` is passed in (not returned) so that a caller logging a failure
    still sees how far the decode got.
    """
    route = mediatypes.resolve(options.media_type)
    # Both pipes to 1 MiB: containerd writes stdin 32 KiB at a time from a goroutine and
    # reads stdout 32 KiB at a time (docs/stream-processor-contract.md); with 64 KiB pipes
    # every read here took at most 64 KiB and woke the writer (README "Performance").
    widen_pipe(in_fd)
    src = result.source = Source(in_fd)
    head = bytes(src.peek(4096))
    if not head:
        raise DataError("input is empty")
    result.compression = _check_compression(route, codecs.detect(head), head)
    widen_pipe(out_fd)
    sink = result.sink = HoldbackSink(out_fd, background=True)
    gate = ImageGate(sink, expected_payload(route, result.compression), options.max_output_bytes)
    tune_at = TUNE_MALLOC_AFTER if options.tune_malloc else -1
    try:
        for chunk in decompress(src, result, options, sink.buffer):
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
