"""Streaming zstd decoding with exact frame boundaries and bounded memory.

The decoder walks the zstd framing itself (frame header, 3-byte block
headers, checksum) and hands libzstd whole blocks. That bounds each step's
output (a block regenerates at most 128 KiB: no RLE bomb), gives the exact
offset of every frame (what the chunk table is checked against) and names
every error with its offset. libzstd decompresses into a buffer the caller
lends (``Output``: the sink's ring), 128 KiB at a time as ``zstd -dc`` does,
not into a fresh ``bytes`` per step (README "Performance").
"""

from __future__ import annotations

from stream_processor.errors import DataError
from stream_processor.framing import (
    DEFAULT_MAX_WINDOW,
    MAX_RECORDED_OFFSETS,
    SKIPPABLE_MAGIC,
    SKIPPABLE_MASK,
    ZSTD_MAGIC,
    ZstdStats,
    check_frame_budget,
)
from stream_processor.source import Source
from stream_processor.zstd_backend import zstandard

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Protocol, TypeAlias

    class FrameObserver(Protocol):
        """Told about the framing as it streams by: the chunk-table verifier is the one.

        Calls are per frame, never per block: ``frame_start`` and ``frame_end`` for each
        data frame in stream order (even when frames decode on several threads),
        ``skippable`` for each skippable frame, ``finish`` once the stream ended cleanly.
        """

        def frame_start(self, index: int, offset: int) -> str | None:
            """A data frame begins; a ``hashlib`` name to hash its compressed bytes with."""
            ...

        def frame_end(
            self, index: int, end_offset: int, decompressed_size: int, digest: bytes | None
        ) -> None: ...

        def skippable(self, frame: SkippableFrame) -> None:
            """Read ``frame.payload()`` or ``frame.skip()`` it; the decoder skips it if neither."""
            ...

        def finish(self, total_out: int, end_offset: int) -> None: ...

    class _Hasher(Protocol):
        def update(self, data: memoryview, /) -> None: ...

        def digest(self) -> bytes: ...

    # Where decompressed bytes go: called with a size, returns a writable buffer of at
    # most that many bytes (at least 1); the decoder yields the filled part of it. The
    # buffer may be reused once the yielded view has been consumed
    # (``sink.HoldbackSink.buffer``).
    Output: TypeAlias = Callable[[int], memoryview]

BLOCK_MAX = 128 * 1024
BLOCKS_PER_STEP = 8  # whole blocks handed to libzstd per input read
OUTPUT_STEP = 128 * 1024  # output per ``readinto``: zstd -dc's buffer, stays in the cache
MAX_FRAME_HEADER = 18
SKIPPABLE_PAYLOAD_LIMIT = 64 << 20  # payloads an observer asks to read whole


def reused_output() -> Output:
    """An ``Output`` lending one buffer again and again (see ``as_bytes``)."""
    buffer = memoryview(bytearray(OUTPUT_STEP))
    return lambda size: buffer[:size]


def as_bytes(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes]:
    """Each chunk as ``bytes`` of its own, for callers that keep chunks (or hand them to
    code that may): a view of a reused buffer is copied, ``bytes`` pass as they are."""
    for chunk in chunks:
        yield chunk if isinstance(chunk, bytes) else bytes(chunk)


def _u32(view: memoryview | bytes, at: int = 0) -> int:
    return int.from_bytes(view[at : at + 4], "little")


def walk_frames(src: Source, observer: FrameObserver | None, stats: ZstdStats) -> Iterator[int]:
    """Walk the stream's framing: yield the offset of each zstd data frame.

    The caller consumes the frame (and ``stats.count_frame``s it) before asking
    for the next. Skippable frames are consumed here; stray bytes, anything that
    is not zstd, framing bombs and a stream without data frames are refused.
    Shared by the streaming decoder below and ``zstd_parallel``.
    """
    while True:
        head = src.peek(8)
        if not head:
            break
        offset = src.position
        if len(head) < 4:
            raise DataError(
                f"zstd: {len(head)} stray bytes at offset {offset} after the last frame"
            )
        check_frame_budget(stats.frames + stats.skippable_frames, stats.out_bytes, offset)
        magic = _u32(head)
        if magic == ZSTD_MAGIC:
            yield offset
        elif (magic & SKIPPABLE_MASK) == SKIPPABLE_MAGIC:
            read_skippable(src, magic, offset, observer, stats)
        elif stats.frames == 0 and not stats.skippable:
            raise DataError("input is not zstd (no zstd frame magic at the start)")
        else:
            raise DataError(
                f"zstd: trailing data at offset {offset} is neither a zstd frame "
                "nor a skippable frame"
            )
    if stats.frames == 0:
        if stats.skippable:
            raise DataError("zstd: the stream holds no data frame, only skippable frames")
        raise DataError("input is empty")


def decode_zstd(
    src: Source,
    *,
    max_window_size: int = DEFAULT_MAX_WINDOW,
    observer: FrameObserver | None = None,
    stats: ZstdStats | None = None,
) -> Iterator[bytes]:
    """Yield the decompressed bytes of every frame in ``src``, in order.

    Raises ``DataError`` for empty input, anything that is not zstd framing,
    truncation, corruption, checksum mismatches and oversized windows.
    """
    return as_bytes(
        decode_zstd_into(
            src, reused_output(), max_window_size=max_window_size, observer=observer, stats=stats
        )
    )


def decode_zstd_into(
    src: Source,
    out: Output,
    *,
    max_window_size: int = DEFAULT_MAX_WINDOW,
    observer: FrameObserver | None = None,
    stats: ZstdStats | None = None,
) -> Iterator[memoryview]:
    """``decode_zstd``, decompressing into buffers from ``out``: each view yielded must
    be consumed before the next is asked for (the buffer may be lent again)."""
    stats = stats if stats is not None else ZstdStats()
    dctx = zstandard.ZstdDecompressor(max_window_size=max_window_size)
    for offset in walk_frames(src, observer, stats):
        for chunk in decode_frame(src, dctx, stats.frames, max_window_size, observer, out):
            stats.out_bytes += len(chunk)
            yield chunk
        stats.count_frame(offset)
    if observer is not None:
        observer.finish(stats.out_bytes, src.position)


def read_skippable(
    src: Source,
    magic: int,
    offset: int,
    observer: FrameObserver | None,
    stats: ZstdStats,
) -> None:
    head = src.take(8)
    if len(head) < 8:
        raise DataError(f"zstd: truncated skippable frame header at offset {offset}")
    size = _u32(head, 4)
    stats.skippable_frames += 1
    if len(stats.skippable) < MAX_RECORDED_OFFSETS:
        stats.skippable.append((magic, offset, size))
    if observer is None:
        _skip(src, offset, size)
        return
    frame = SkippableFrame(src, magic, offset, size)
    observer.skippable(frame)
    frame.skip()


def _skip(src: Source, offset: int, size: int) -> None:
    if src.skip(size) < size:
        raise DataError(f"zstd: skippable frame at offset {offset} is truncated")


class SkippableFrame:
    """A skippable frame whose 8-byte header has been read, shown to the observer: ``head``
    (its first bytes) to decide by, then ``payload()`` to read it whole or ``skip()``."""

    __slots__ = ("_consumed", "_src", "head", "magic", "offset", "size")

    def __init__(self, src: Source, magic: int, offset: int, size: int) -> None:
        self._src = src
        self._consumed = False
        self.magic = magic
        self.offset = offset
        self.size = size
        self.head = bytes(src.peek(min(size, 512)))  # a dm-verity superblock is 512

    def payload(self) -> bytes:
        """Consume the whole payload; ``DataError`` if it is too large or truncated."""
        src, offset, size = self._src, self.offset, self.size
        if size > SKIPPABLE_PAYLOAD_LIMIT:
            raise DataError(
                f"zstd: skippable frame at offset {offset} declares {size} bytes, "
                f"more than the {SKIPPABLE_PAYLOAD_LIMIT} this decoder reads"
            )
        self._consumed = True
        parts = []
        left = size
        while left:
            part = src.take(min(left, src.capacity // 2))
            if not part:
                break
            parts.append(bytes(part))
            left -= len(part)
        payload = b"".join(parts)
        if len(payload) < size:
            raise DataError(
                f"zstd: skippable frame at offset {offset} is truncated "
                f"({len(payload)} of {size} bytes)"
            )
        return payload

    def skip(self) -> None:
        """Consume the payload unread (nothing if it was consumed); ``DataError`` if truncated."""
        if not self._consumed:
            self._consumed = True
            _skip(self._src, self.offset, self.size)


class FrameHeader:
    """A checked zstd frame header: where the frame starts and what it declares."""

    __slots__ = ("content_size", "has_checksum", "header_size", "offset", "window_size")

    def __init__(
        self,
        offset: int,
        header_size: int,
        content_size: int | None,
        has_checksum: bool,
        window_size: int,
    ) -> None:
        self.offset = offset
        self.header_size = header_size
        self.content_size = content_size
        self.has_checksum = has_checksum
        self.window_size = window_size


def read_frame_header(src: Source, max_window_size: int) -> FrameHeader:
    """Peek and check the header of the frame at the current position (nothing consumed)."""
    offset = src.position
    head = bytes(src.peek(MAX_FRAME_HEADER))
    try:
        header_size = zstandard.frame_header_size(head)
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as exc:
        if len(head) < MAX_FRAME_HEADER:
            raise DataError(f"zstd: truncated frame header at offset {offset}") from exc
        raise DataError(f"zstd: corrupt frame header at offset {offset}: {exc}") from exc
    if len(head) < header_size:
        raise DataError(f"zstd: truncated frame header at offset {offset}")
    if params.dict_id:
        raise DataError(f"zstd: frame at offset {offset} needs dictionary {params.dict_id}")
    if params.window_size > max_window_size:
        from stream_processor.sizes import human  # only on this error path: start-up stays lean

        raise DataError(
            f"zstd: frame at offset {offset} needs a {human(params.window_size)} window, "
            f"more than the {human(max_window_size)} allowed (--max-window-size)"
        )
    content_size = (
        None if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else params.content_size
    )
    return FrameHeader(
        offset, header_size, content_size, bool(params.has_checksum), params.window_size
    )


def _scan_blocks(view: memoryview, at: int, max_blocks: int) -> tuple[int, bool]:
    """Walk whole block headers in ``view``: (bytes covered, last block reached).

    Stops at the first block that is not wholly in ``view`` or after
    ``max_blocks``; ``at`` is the stream offset of ``view[0]`` for errors.
    """
    n = len(view)
    pos = 0
    blocks = 0
    while pos + 3 <= n and blocks < max_blocks:
        value = view[pos] | (view[pos + 1] << 8) | (view[pos + 2] << 16)
        block_type, block_size = (value >> 1) & 3, value >> 3
        if block_type == 3 or block_size > BLOCK_MAX:
            raise DataError(f"zstd: corrupt block header at offset {at + pos}")
        end = pos + 3 + (1 if block_type == 1 else block_size)
        if end > n:
            break
        pos = end
        blocks += 1
        if value & 1:
            return pos, True
    return pos, False


def _block_runs(src: Source, header: FrameHeader, max_blocks: int) -> Iterator[memoryview]:
    """Consume the frame's blocks as runs of whole, already-buffered blocks."""
    window = src.capacity // 2  # > BLOCK_MAX + 3: a whole block always fits
    done = False
    while not done:
        view = src.peek(window)
        pos, done = _scan_blocks(view, src.position, max_blocks)
        if pos == 0:
            what = "mid-frame" if len(view) < 3 else "mid-block"
            raise DataError(
                f"zstd: frame at offset {header.offset} is truncated (input ends {what})"
            )
        yield src.take(pos)


def _checksum(src: Source, header: FrameHeader) -> memoryview:
    checksum = src.take(4)
    if len(checksum) < 4:
        raise DataError(f"zstd: frame at offset {header.offset} is truncated (checksum missing)")
    return checksum


def frame_blocks(src: Source, header: FrameHeader) -> Iterator[memoryview]:
    """Consume the frame at the current position piece by piece: header, blocks, checksum.

    Each view is valid until the next one is requested. Walking the 3-byte
    block headers finds the frame's end without decompressing anything. Runs
    of up to ``BLOCKS_PER_STEP`` whole blocks that are already buffered are
    handed out together: each block regenerates at most 128 KiB, so one step
    still produces at most 1 MiB, with a fraction of the per-call overhead.
    """
    yield src.take(header.header_size)
    yield from _block_runs(src, header, BLOCKS_PER_STEP)
    if header.has_checksum:
        yield _checksum(src, header)


def read_whole_frame(src: Source, header: FrameHeader, limit: int) -> bytearray:
    """Consume the frame at the current position and return its bytes (at most ``limit``).

    The same walk as ``frame_blocks`` with no cap on blocks per run: the main
    thread only cuts frames for worker threads, so it copies as much as is
    buffered at once.
    """
    data = bytearray(src.take(header.header_size))
    for run in _block_runs(src, header, 1 << 30):
        data += run
        if len(data) > limit:
            raise DataError(
                f"zstd: frame at offset {header.offset} is far larger than the "
                f"{header.content_size} bytes it declares"
            )
    if header.has_checksum:
        data += _checksum(src, header)
    return data


class _FrameInput:
    """The frame's pieces (``frame_blocks``) as the ``read`` that ``stream_reader`` calls,
    hashed on the way when asked, then ``_end_probe()``, then end of input.

    python-zstandard's reader does not tell whether libzstd reached the end of
    the frame (``decompressobj().eof`` did). The probe makes libzstd say it:
    right after a frame that libzstd saw end it is an empty skippable frame,
    skipped without output. If libzstd were still inside the frame (a block or
    the checksum not finished where the walk said the frame ends), it ends in
    an error wherever it is: read as block headers the probe's bytes declare
    blocks too large or of the reserved type (0xFF...), read as a checksum
    they do not match, and the payload is longer than any block libzstd could
    be waiting for. The one block of garbage it may regenerate before the
    error is smaller than the held-back tail (``sink.DEFAULT_HOLD``).
    """

    def __init__(self, pieces: Iterator[memoryview], hasher: _Hasher | None) -> None:
        self._pieces = pieces
        self._hasher = hasher
        self.probing = False

    def read(self, size: int) -> memoryview | bytes:
        if self.probing:
            return b""
        piece = next(self._pieces, None)
        if piece is None:
            self.probing = True
            return _end_probe()
        if self._hasher is not None:
            self._hasher.update(piece)
        return piece


_PROBE: list[bytes] = []


def _end_probe() -> bytes:
    """An empty skippable frame whose 0xFF payload outlasts any zstd block (see ``_FrameInput``)."""
    if not _PROBE:
        size = BLOCK_MAX + 256
        _PROBE.append(
            (SKIPPABLE_MAGIC).to_bytes(4, "little") + size.to_bytes(4, "little") + b"\xff" * size
        )
    return _PROBE[0]


def decode_frame(
    src: Source,
    dctx: zstandard.ZstdDecompressor,
    index: int,
    max_window_size: int,
    observer: FrameObserver | None,
    out: Output,
) -> Iterator[memoryview]:
    """Decompress the frame at the current position into buffers from ``out``, yielding
    the filled part of each (the walk of ``frame_blocks`` decides where the frame ends)."""
    header = read_frame_header(src, max_window_size)
    offset, content_size = header.offset, header.content_size
    hasher = None
    if observer is not None:
        algorithm = observer.frame_start(index, offset)
        if algorithm is not None:
            import hashlib  # only when a frame is hashed: OpenSSL would be every layer's start-up

            hasher = hashlib.new(algorithm)
    frame_input = _FrameInput(frame_blocks(src, header), hasher)
    stream: IO[bytes] = frame_input  # type: ignore[assignment]  # it has read/readinto
    reader = dctx.stream_reader(stream, read_size=BLOCK_MAX, read_across_frames=False)
    produced = 0
    try:
        while True:
            buffer = out(OUTPUT_STEP)
            n = reader.readinto(buffer)
            if not n:
                break
            produced += n
            yield buffer[:n]
    except zstandard.ZstdError as exc:
        if frame_input.probing:
            raise DataError(
                f"zstd: frame at offset {offset} did not end where its blocks said"
            ) from exc
        raise DataError(f"zstd: corrupt data in frame at offset {offset}: {exc}") from exc
    if not frame_input.probing:
        raise DataError(f"zstd: frame at offset {offset} did not end where its blocks said")
    if content_size is not None and produced != content_size:
        raise DataError(
            f"zstd: frame at offset {offset} declares {content_size} bytes but holds {produced}"
        )
    if observer is not None:
        digest = hasher.digest() if hasher is not None else None
        observer.frame_end(index, src.position, produced, digest)
