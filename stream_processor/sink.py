"""Writing the output: hold back the tail until every check has passed.

containerd 2.3's erofs differ ignores the processor's exit status and
trusts the digest of what it read. So the last ``hold`` bytes stay in memory
until the caller says the whole input was good (``release``). Any failure
before that leaves stdout short of the complete image, and the digest check
rejects the layer. Chunks are queued without copying and written in batches.

With ``background=True`` the batches are written by one writer thread, so
decompression (libzstd and ISA-L release the GIL) goes on while a write
waits for the reader: containerd's reader and the decoder then overlap
instead of taking turns. At most ``WRITER_DEPTH`` batches are in flight, and
a write error stops the decode at its next batch.

A decoder that can decompress into a buffer it is lent (the streaming zstd
path) asks ``buffer`` for one: a region of the sink's own ``RING`` (1 MiB),
so the same memory is filled, held back and written over and over while it
stays in the CPU's cache, as ``zstd -dc`` reuses one 128 KiB buffer, instead
of a fresh buffer per step. Ring bytes go out ``RING_BATCH`` at a time, and
their region is lent again only once they have reached stdout: when the ring
is full, ``buffer`` waits for the writer thread as ``zstd -dc`` waits in
``write``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from _thread import allocate_lock

from stream_processor.errors import InputOutputError, ReaderGone

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

DEFAULT_HOLD = 256 * 1024  # >= the largest EROFS block (64 KiB) and a tar end-of-archive
DEFAULT_BATCH = 1 << 20
RING = 1 << 20  # > hold + RING_BATCH + a decoder's step (128 KiB): room to lend a step
RING_BATCH = 256 * 1024
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_IOV_MAX = 1024
WRITER_DEPTH = 4

Batch = list[bytes | memoryview]
Job = tuple[Batch, int]  # a batch, and how many of its chunks are ring regions


class _BackgroundWriter:
    """One thread that writes submitted batches in order; errors surface on the next call."""

    def __init__(self, write: Callable[[Job], None]) -> None:
        # Only layers larger than the held-back tail need a thread: ``threading`` and
        # ``queue`` (with the ``collections`` they load) stay off a small layer's start.
        import threading
        from queue import Queue

        self._write = write
        self._queue: Queue[Job | None] = Queue(WRITER_DEPTH)
        self.error: BaseException | None = None
        self._dropping = False  # set by abort: batches still queued are not written
        self._thread = threading.Thread(target=self._run, name="stdout-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self.error is None and not self._dropping:  # else keep taking: submit never blocks
                try:
                    self._write(batch)
                except BaseException as exc:
                    self.error = exc

    def submit(self, job: Job) -> None:
        self._check()
        self._queue.put(job)

    def close(self) -> None:
        """Wait until every submitted batch is written; raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def abort(self, timeout: float) -> None:
        """Drop the batches not yet written; wait up to ``timeout`` for the one being written.

        After a failure nothing more should reach stdout, and the log record
        must count what did: waiting lets the write in progress finish (a
        reader that has stopped reading is not waited for beyond ``timeout``).
        """
        self._dropping = True
        with self._queue.mutex:
            self._queue.queue.clear()
            self._queue.not_full.notify_all()
        self._queue.put_nowait(None)
        self._thread.join(timeout)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error


class HoldbackSink:
    """Queue output, write all but the last ``hold`` bytes, release the rest on demand."""

    def __init__(
        self,
        fd: int,
        hold: int = DEFAULT_HOLD,
        batch: int = DEFAULT_BATCH,
        background: bool = False,
    ) -> None:
        self._fd = fd
        self._hold = hold
        self._batch = batch
        self._background = background
        self._writer: _BackgroundWriter | None = None
        self._queue: list[bytes | memoryview] = []  # a few chunks: hold + one batch
        self._queued = 0
        self.written = 0
        self.received = 0  # bytes accepted by ``write`` so far
        self._ring: bytearray | None = None  # allocated by the first ``buffer`` call
        self._ring_view = memoryview(b"")
        self._ring_end = 0  # where the queued ring bytes end
        self._lent = -1  # where the region last lent by ``buffer`` starts (-1: none)
        # Ring bytes not yet written, oldest first: (start, end). Freed by whichever
        # thread wrote them, under ``_ring_lock``; with a writer thread, ``_ring_room``
        # (a condition on that lock, made with the thread) is notified then.
        self._ring_spans: list[tuple[int, int]] = []
        self._ring_lock = allocate_lock()
        self._ring_room: threading.Condition | None = None
        self._ring_in_flight = 0  # spans handed to the writer thread, not yet written

    def buffer(self, size: int) -> memoryview:
        """A writable region of up to ``size`` bytes for the next output: ``write`` the
        filled part of it (``region[:n]``, nothing else) to queue it without a copy.

        The region is valid until the next ``buffer`` or ``write`` call; a region
        never written is simply lent again. While the ring is full of bytes the
        writer thread has yet to write, this waits for it; when it is full of
        bytes held back here, a new buffer is lent instead (written like any
        other bytes).
        """
        if self._ring is None:
            self._ring = bytearray(RING)
            self._ring_view = memoryview(self._ring)
        self._lent = -1
        with self._ring_lock:
            while True:
                start, limit = self._room(size)
                if start < limit:
                    self._lent = start
                    return self._ring_view[start : min(start + size, limit)]
                writer, room = self._writer, self._ring_room
                if not self._ring_in_flight or writer is None or writer.error is not None:
                    return memoryview(bytearray(size))
                assert room is not None  # made with the writer
                room.wait()

    def _room(self, size: int) -> tuple[int, int]:
        """The free ring region [start, limit) to lend next (empty when the ring is full)."""
        spans = self._ring_spans
        if not spans:
            self._ring_end = 0
            return 0, RING
        first, end = spans[0][0], self._ring_end
        if end > first:  # the queued bytes lie in [first, end): room after them, or at 0
            if RING - end >= min(size, RING // 8) or first == 0:
                return end, RING
            end = 0
        return end, first

    def write(self, chunk: bytes | memoryview) -> None:
        if not chunk:
            return
        if isinstance(chunk, memoryview) and chunk.obj is self._ring and self._ring is not None:
            if self._lent < 0:  # not from the region just lent: never queue reusable memory
                chunk = bytes(chunk)
            else:
                with self._ring_lock:
                    self._ring_end = self._lent + len(chunk)
                    self._ring_spans.append((self._lent, self._ring_end))
                self._lent = -1
        self.received += len(chunk)
        self._queue.append(chunk)
        self._queued += len(chunk)
        batch = RING_BATCH if self._ring_spans else self._batch
        if self._queued - self._hold >= batch:
            self._drain(self._hold)

    def release(self) -> None:
        """Every check passed: write everything still held, and wait until it is written."""
        self._lent = -1
        self._drain(0)
        if self._writer is not None:
            self._writer.close()

    def abort(self, timeout: float = 1.0) -> None:
        """The decode failed: write nothing more (see ``_BackgroundWriter.abort``)."""
        self._queue.clear()
        self._queued = 0
        if self._writer is not None:
            self._writer.abort(timeout)
        with self._ring_lock:
            self._ring_spans.clear()
            self._ring_in_flight = 0

    def _drain(self, keep: int) -> None:
        queue = self._queue
        taken = 0
        in_ring = 0
        while taken < len(queue) and self._queued - len(queue[taken]) >= keep:
            chunk = queue[taken]
            taken += 1
            self._queued -= len(chunk)
            if isinstance(chunk, memoryview) and chunk.obj is self._ring:
                in_ring += 1
        if not taken:
            return
        batch: Batch = queue[:taken]
        del queue[:taken]
        if self._writer is None and self._background and keep:
            # Started by the first batch before the end: a layer that fits in the
            # held-back tail is written directly at release, with no thread.
            import threading  # loaded by the writer

            self._ring_room = threading.Condition(self._ring_lock)
            self._writer = _BackgroundWriter(self._write_job)
        if self._writer is not None:
            with self._ring_lock:
                self._ring_in_flight += in_ring
            self._writer.submit((batch, in_ring))
        else:
            self._write_job((batch, in_ring))

    def _write_job(self, job: Job) -> None:
        """Write a batch; then its ring regions may be lent again."""
        batch, in_ring = job
        try:
            self._write_all(batch)
        finally:
            if in_ring:
                with self._ring_lock:
                    del self._ring_spans[:in_ring]
                    if self._writer is not None:
                        self._ring_in_flight = max(0, self._ring_in_flight - in_ring)
                    if self._ring_room is not None:
                        self._ring_room.notify_all()

    def _write_all(self, batch: Batch) -> None:
        """Write ``batch`` with as few ``writev`` calls as the kernel allows."""
        views = [memoryview(chunk) for chunk in batch]
        first = 0
        while first < len(views):
            try:
                n = os.writev(self._fd, views[first : first + _IOV_MAX])
            except InterruptedError:
                continue
            except BrokenPipeError as exc:
                raise ReaderGone() from exc
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise ReaderGone() from exc
                raise InputOutputError.from_os_error("cannot write the output", exc) from exc
            self.written += n
            while n and n >= len(views[first]):
                n -= len(views[first])
                first += 1
            if n:
                views[first] = views[first][n:]


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Give a pipe on ``fd`` a larger kernel buffer, so fewer wake-ups pass the data.

    containerd reads 32 KiB at a time; with the default 64 KiB pipe the two
    processes ping-pong on every other read. Best effort: silently keeps the
    default where the kernel refuses (not a pipe, over pipe-max-size).
    """
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass
