"""Writing the output: hold back the tail until every check has passed.

containerd 2.3's erofs differ ignores the processor's exit status and
trusts the digest of what it read. So the last ``hold`` bytes stay in memory
until the caller says the whole input was good (``release``). Any failure
before that leaves stdout short of the complete image, and the digest check
rejects the layer. Chunks are queued without copying and written in batches.
"""

from __future__ import annotations

import errno
import os
from collections import deque

from stream_processor.errors import InputOutputError, ReaderGone

DEFAULT_HOLD = 256 * 1024  # >= the largest EROFS block (64 KiB) and a tar end-of-archive
DEFAULT_BATCH = 1 << 20


class HoldbackSink:
    """Queue output, write all but the last ``hold`` bytes, release the rest on demand."""

    def __init__(self, fd: int, hold: int = DEFAULT_HOLD, batch: int = DEFAULT_BATCH) -> None:
        self._fd = fd
        self._hold = hold
        self._batch = batch
        self._queue: deque[bytes | memoryview] = deque()
        self._queued = 0
        self.written = 0

    def write(self, chunk: bytes | memoryview) -> None:
        if not chunk:
            return
        self._queue.append(chunk)
        self._queued += len(chunk)
        if self._queued - self._hold >= self._batch:
            self._drain(self._hold)

    def release(self) -> None:
        """Every check passed: write everything still held."""
        self._drain(0)

    def _drain(self, keep: int) -> None:
        queue = self._queue
        while queue and self._queued - len(queue[0]) >= keep:
            chunk = queue.popleft()
            self._queued -= len(chunk)
            self._write_all(chunk)

    def _write_all(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            except BrokenPipeError as exc:
                raise ReaderGone() from exc
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise ReaderGone() from exc
                raise InputOutputError.from_os_error("cannot write the output", exc) from exc
            view = view[n:]
            self.written += n
