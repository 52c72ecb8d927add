"""Buffered reading from a file descriptor with peek, take and skip.

The codecs need to look at a few header bytes before deciding how much to
consume (zstd block headers, skippable frame sizes), and to hand exact byte
ranges to the decompressor without copying. ``Source`` keeps one fixed-size
buffer that is refilled with ``readv`` straight into it, so memory stays
bounded whatever the input size.

Views returned by ``peek`` and ``take`` stay valid only until the next call
on the same ``Source``: consume them first.
"""

from __future__ import annotations

import errno
import os

from stream_processor.errors import InputOutputError

DEFAULT_CAPACITY = 1 << 20
READ_SIZE = 256 * 1024


class Source:
    """A byte stream read from ``fd`` with a bounded look-ahead buffer."""

    def __init__(self, fd: int, capacity: int = DEFAULT_CAPACITY, prefix: bytes = b"") -> None:
        if capacity < 2 * READ_SIZE:
            capacity = 2 * READ_SIZE
        self._fd = fd
        self._buf = bytearray(max(capacity, len(prefix)))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = len(prefix)
        self._buf[: len(prefix)] = prefix
        self._eof = False
        self.position = 0  # bytes consumed so far: the offset of the next byte in the stream
        self.bytes_read = len(prefix)  # bytes read from the descriptor (plus prefix)

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def _fill(self, want: int) -> None:
        """Make at least ``want`` bytes available unless the input ends first."""
        if want > len(self._buf):
            raise ValueError(f"look-ahead of {want} bytes exceeds the buffer")
        while self._end - self._start < want and not self._eof:
            if len(self._buf) - self._start < want or self._end == len(self._buf):
                n = self._end - self._start
                self._buf[0:n] = self._buf[self._start : self._end]
                self._start, self._end = 0, n
            try:
                got = os.readv(self._fd, [self._view[self._end :]])
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise InputOutputError.from_os_error("cannot read the input", exc) from exc
            if got == 0:
                self._eof = True
            self._end += got
            self.bytes_read += got

    def peek(self, n: int) -> memoryview:
        """Up to ``n`` bytes without consuming them; fewer only at the end of input."""
        self._fill(n)
        return self._view[self._start : min(self._end, self._start + n)]

    def take(self, n: int) -> memoryview:
        """Consume and return up to ``n`` bytes; fewer only at the end of input."""
        view = self.peek(n)
        self._start += len(view)
        self.position += len(view)
        return view

    def read_some(self, limit: int = READ_SIZE) -> memoryview:
        """Consume whatever is buffered (reading more if empty), at most ``limit`` bytes."""
        if self._start == self._end:
            self._fill(1)
        n = min(limit, self._end - self._start)
        view = self._view[self._start : self._start + n]
        self._start += n
        self.position += n
        return view

    def skip(self, n: int) -> int:
        """Discard up to ``n`` bytes; returns how many were skipped."""
        done = 0
        while done < n:
            step = self.take(min(n - done, READ_SIZE))
            if not step:
                break
            done += len(step)
        return done

    def at_eof(self) -> bool:
        """True when every byte has been consumed and the input has ended."""
        self._fill(1)
        return self._start == self._end
