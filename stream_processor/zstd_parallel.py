"""Decoding independent zstd frames on several threads, output in order.

The main thread walks the framing as the streaming decoder does
(``zstd_codec``) to cut whole frames out of the input, and a pool decodes
them (libzstd releases the GIL). Only frames declaring at most
``MAX_PARALLEL_FRAME`` go to the pool, within ``IN_FLIGHT_BUDGET``; any other
frame, and always the first, streams on the calling thread, so a
single-frame layer never starts a pool. The observer sees the same calls, in
stream order, as on the streaming path.
"""

from __future__ import annotations

import os
from _thread import get_ident

from stream_processor.errors import DataError
from stream_processor.framing import DEFAULT_MAX_WINDOW, ZstdStats
from stream_processor.source import Source
from stream_processor.zstd_backend import zstandard
from stream_processor.zstd_codec import (
    as_bytes,
    decode_frame,
    read_frame_header,
    read_whole_frame,
    reused_output,
    walk_frames,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from collections.abc import Iterator

    from stream_processor.zstd_codec import FrameHeader, FrameObserver, Output

MAX_PARALLEL_FRAME = 16 << 20  # frames declaring more are streamed: bounds memory per thread
# Declared output of all frames in flight, whatever --threads says: the default
# thread count is the host's CPU count, and a layer of 16 MiB zero frames is tiny.
IN_FLIGHT_BUDGET = 128 << 20


def compressed_bound(content_size: int) -> int:
    """The most compressed bytes a frame of ``content_size`` bytes needs (with slack).

    A zstd block never exceeds 128 KiB plus its 3-byte header, so even
    incompressible data grows by well under 1 %; anything above this bound is
    padding meant to make us buffer without limit.
    """
    return content_size + (content_size >> 7) + (64 << 10)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_malloc_tuned = False


def tune_malloc() -> None:
    """Keep glibc from returning and re-faulting the chunk-sized buffers on every frame.

    By default each multi-MiB result is a fresh ``mmap`` (or trimmed heap), so
    every output page is faulted in again (README "Performance"). One arena, no
    mmap for chunk-sized blocks and a trim threshold above the working set make
    the buffers recycle, without raising peak RSS. Process-wide, so done once:
    when a pool starts, or when a CLI decode has produced
    ``decode.TUNE_MALLOC_AFTER`` bytes; silently skipped off glibc. Meant for the
    CLI, one layer per process: a long-lived process that decodes thousands of
    blobs (a fuzzer) would trade the faults for heap fragmentation: it should set
    ``_malloc_tuned = True`` first to skip it.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 1)
        libc.mallopt(_M_MMAP_THRESHOLD, 2 * MAX_PARALLEL_FRAME)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, ValueError, AttributeError):  # not glibc: the defaults are merely slower
        return


class _Job:
    """One pooled frame: its bytes, where it was, and the worker's result once ``done``."""

    def __init__(
        self,
        index: int,
        offset: int,
        end_offset: int,
        content_size: int,
        data: bytearray,
        algorithm: str | None,
    ) -> None:
        self.index = index
        self.offset = offset
        self.end_offset = end_offset
        self.content_size = content_size
        self.data = data
        self.algorithm = algorithm
        self.submitted = False
        self.cancelled = False
        import threading  # jobs exist from a layer's second frame on: not on a small layer's start

        self.done = threading.Event()
        self.result: tuple[bytes, bytes | None] | None = None
        self.error: BaseException | None = None

    def outcome(self) -> tuple[bytes, bytes | None]:
        """Wait for the worker; its result, or its exception raised here."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class _Pool:
    """``threads`` daemon threads decoding submitted jobs, first in first out.

    Not ``concurrent.futures``: importing it (with the ``logging`` it pulls in)
    was start-up time on every multi-frame layer (README "Performance"), for a
    submit, a result and a shutdown. A cancelled job is skipped; ``shutdown`` lets each
    thread finish the frame in hand (milliseconds) and waits for it.
    """

    def __init__(self, threads: int, worker: _Worker) -> None:
        import threading
        from queue import Queue  # already loaded by the sink's writer thread

        self._worker = worker
        self._jobs: Queue[_Job | None] = Queue()
        self._threads = [
            threading.Thread(target=self._run, name=f"zstd_{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.cancelled:
                try:
                    job.result = self._worker(job)
                except BaseException as exc:
                    job.error = exc
            job.done.set()

    def submit(self, job: _Job) -> None:
        job.submitted = True
        self._jobs.put(job)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


class _Worker:
    """Per-thread decompressor (a ``ZstdDecompressor`` must not be shared between threads)."""

    def __init__(self, max_window_size: int) -> None:
        self._max_window_size = max_window_size
        self._dctx: dict[int, zstandard.ZstdDecompressor] = {}  # by thread

    def __call__(self, job: _Job) -> tuple[bytes, bytes | None]:
        dctx = self._dctx.get(get_ident())
        if dctx is None:
            dctx = self._dctx[get_ident()] = zstandard.ZstdDecompressor(
                max_window_size=self._max_window_size
            )
        digest = None
        if job.algorithm:
            import hashlib

            digest = hashlib.new(job.algorithm, job.data).digest()
        try:
            out = dctx.decompress(job.data, max_output_size=job.content_size)
        except zstandard.ZstdError as exc:
            raise DataError(f"zstd: corrupt data in frame at offset {job.offset}: {exc}") from exc
        if len(out) != job.content_size:
            raise DataError(
                f"zstd: frame at offset {job.offset} declares {job.content_size} bytes "
                f"but holds {len(out)}"
            )
        return out, digest


class ParallelDecoder:
    """State of one parallel decode; ``run`` is the generator of output chunks."""

    def __init__(
        self,
        src: Source,
        threads: int,
        max_window_size: int,
        observer: FrameObserver | None,
        stats: ZstdStats,
        max_frame: int,
        out: Output | None = None,  # None: one reused buffer (consume each chunk at once)
    ) -> None:
        self.src = src
        self.out = out if out is not None else reused_output()
        self.threads = max(1, threads)
        self.max_window_size = max_window_size
        self.observer = observer
        self.stats = stats
        self.max_frame = max_frame
        self.worker = _Worker(max_window_size)
        self.pool: _Pool | None = None
        self.pending: list[_Job] = []  # a few frames: at most threads + the budget's
        self.pending_bytes = 0  # declared content of the pending frames

    def run(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self._frames()
        finally:
            for job in self.pending:
                job.cancelled = True
            if self.pool is not None:
                self.pool.shutdown()

    def _frames(self) -> Iterator[bytes | memoryview]:
        src, stats = self.src, self.stats
        dctx: zstandard.ZstdDecompressor | None = None
        for offset in walk_frames(src, self.observer, stats):
            header = read_frame_header(src, self.max_window_size)
            size = header.content_size
            # The first frame always streams: a single-frame layer never buffers a
            # frame nor starts a pool. From the second frame on, chunks go to the pool.
            if stats.frames > 0 and size is not None and size <= self.max_frame:
                yield from self._queue(self._collect(header))
                continue
            yield from self._drain(0)
            if dctx is None:
                dctx = zstandard.ZstdDecompressor(max_window_size=self.max_window_size)
            frame = decode_frame(
                src, dctx, stats.frames, self.max_window_size, self.observer, self.out
            )
            for chunk in frame:
                stats.out_bytes += len(chunk)
                yield chunk
            stats.count_frame(offset)
        yield from self._drain(0)
        if self.observer is not None:
            self.observer.finish(stats.out_bytes, src.position)

    def _collect(self, header: FrameHeader) -> _Job:
        """Consume one frame whole; tell the observer it started."""
        assert header.content_size is not None
        data = read_whole_frame(self.src, header, compressed_bound(header.content_size))
        algorithm = None
        if self.observer is not None:
            algorithm = self.observer.frame_start(self.stats.frames, header.offset)
        job = _Job(
            self.stats.frames,
            header.offset,
            self.src.position,
            header.content_size,
            data,
            algorithm,
        )
        self.stats.count_frame(header.offset)
        return job

    def _queue(self, job: _Job) -> Iterator[bytes]:
        self.pending.append(job)
        self.pending_bytes += job.content_size
        if self.threads < 2:
            yield from self._drain(0)
            return
        if self.pool is None:
            tune_malloc()
            self.pool = _Pool(self.threads, self.worker)
        for waiting in self.pending:
            if not waiting.submitted:
                self.pool.submit(waiting)
        yield from self._drain(self.threads, IN_FLIGHT_BUDGET)

    def _drain(self, keep: int, budget: int = 0) -> Iterator[bytes]:
        """Output the oldest jobs, in order, until at most ``keep`` are pending and
        (with a ``budget``) their declared sizes add up to no more than it, or one is left."""
        while len(self.pending) > keep or (
            budget and self.pending_bytes > budget and len(self.pending) > 1
        ):
            job = self.pending[0]
            out, digest = job.outcome() if job.submitted else self.worker(job)
            del self.pending[0]
            self.pending_bytes -= job.content_size
            job.data = bytearray()
            if self.observer is not None:
                self.observer.frame_end(job.index, job.end_offset, len(out), digest)
            self.stats.out_bytes += len(out)
            yield out


def decode_zstd_parallel(
    src: Source,
    *,
    threads: int,
    max_window_size: int = DEFAULT_MAX_WINDOW,
    observer: FrameObserver | None = None,
    stats: ZstdStats | None = None,
    max_frame: int = MAX_PARALLEL_FRAME,
) -> Iterator[bytes]:
    """Yield the decompressed bytes of every frame in ``src``, in order, using ``threads``.

    Same contract and errors as ``zstd_codec.decode_zstd``.
    """
    return as_bytes(
        decode_zstd_parallel_into(
            src,
            reused_output(),
            threads=threads,
            max_window_size=max_window_size,
            observer=observer,
            stats=stats,
            max_frame=max_frame,
        )
    )


def decode_zstd_parallel_into(
    src: Source,
    out: Output,
    *,
    threads: int,
    max_window_size: int = DEFAULT_MAX_WINDOW,
    observer: FrameObserver | None = None,
    stats: ZstdStats | None = None,
    max_frame: int = MAX_PARALLEL_FRAME,
) -> Iterator[bytes | memoryview]:
    """``decode_zstd_parallel``, a streamed frame decompressed into buffers from ``out``
    (``zstd_codec.decode_zstd_into``); a pooled frame arrives as ``bytes`` of its own."""
    stats = stats if stats is not None else ZstdStats()
    return ParallelDecoder(src, threads, max_window_size, observer, stats, max_frame, out).run()
