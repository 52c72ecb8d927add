"""What a person sees while converting: per-layer lines on a terminal, one line otherwise.

Called from the main thread only: worker processes report bytes read
through shared counters that it polls. On a terminal a status line (bytes
read so far per running layer) is redrawn at most every ``REFRESH_S``
seconds and each finished layer gets a permanent line: bytes read, EROFS
size, wrapped size, time. Elsewhere (CI logs, pipes) only the final summary
line is printed. The lock keeps it safe to call from other threads too.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from stream_processor.convert.layers import PHASE_MKFS, PHASES, LayerReport
from stream_processor.sizes import human, of_total

REFRESH_S = 0.5


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class Progress:
    """Thread-safe progress printer."""

    def __init__(self, stream: TextIO, total: int, *, terminal: bool, quiet: bool = False) -> None:
        self._stream = stream
        self._total = total
        self._terminal = terminal and not quiet
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._phases: dict[str, tuple[int, int]] = {}  # digest -> (PHASES index, total bytes)
        self._done = 0
        self._last = 0.0
        self._status_shown = False

    def set_total(self, total: int) -> None:
        with self._lock:
            self._total = total

    def started(self, digest: str) -> None:
        with self._lock:
            self._running[digest] = 0

    def phase(self, digest: str, index: int, total: int) -> None:
        """The layer entered ``PHASES[index]``, of ``total`` bytes (0: unknown)."""
        if not self._terminal:
            return
        with self._lock:
            if self._phases.get(digest) != (index, total):
                self._phases[digest] = (index, total)
                self._running[digest] = 0
                self._status()  # at once: mkfs.erofs reports no bytes to redraw on

    def read(self, digest: str, nbytes: int) -> None:
        if not self._terminal:
            return
        with self._lock:
            self._running[digest] = nbytes
            now = time.monotonic()
            if now - self._last >= REFRESH_S:
                self._last = now
                self._status()

    def finished(self, report: LayerReport) -> None:
        with self._lock:
            self._running.pop(report.source_digest, None)
            self._phases.pop(report.source_digest, None)
            self._done += 1
            if not self._terminal:
                return
            self._clear()
            read = report.tar_size if report.tar_size is not None else report.source_size
            self._stream.write(
                f"layer {self._done}/{self._total} {short(report.source_digest)}: "
                f"read {human(read)}, erofs {human(report.erofs_size)}, "
                f"{report.media_type.rsplit('+', 1)[-1] if '+' in report.media_type else 'raw'} "
                f"{human(report.wrapped_size)}, {report.seconds:.2f} s\n"
            )
            self._status()

    def summary(self, line: str) -> None:
        with self._lock:
            self._clear()
            self._stream.write(line + "\n")
            self._stream.flush()

    def _status(self) -> None:
        if not self._running:
            self._clear()
            return
        parts = [self._layer_status(d, n) for d, n in sorted(self._running.items())]
        self._stream.write(
            f"\r\x1b[Kconverting ({self._done}/{self._total} done): " + ", ".join(parts)
        )
        self._stream.flush()
        self._status_shown = True

    def _layer_status(self, digest: str, nbytes: int) -> str:
        """``<digest> packing 3 MiB of 12 MiB (25%)``; ``mkfs.erofs`` alone while it builds."""
        index, total = self._phases.get(digest, (0, 0))
        text = f"{short(digest)} {PHASES[index]}"
        if index == PHASE_MKFS:
            return text
        return f"{text} {of_total(nbytes, total) if total else human(nbytes)}"

    def _clear(self) -> None:
        if self._status_shown:
            self._stream.write("\r\x1b[K")
            self._status_shown = False
