"""The optional payload containerd hands a processor on file descriptor 3.

containerd opens fd 3 only when the client supplied a payload for this
processor id; usually it is closed. This tool needs nothing from it, but
must never block on it nor leave containerd's writer stuck, so a FIFO on fd 3
is drained by a daemon thread up to ``LIMIT`` bytes and then closed.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    import threading

PAYLOAD_FD = 3
LIMIT = 1 << 20


class PayloadDrain:
    """Reads (and discards beyond ``LIMIT``) whatever arrives on fd 3, off the main thread."""

    def __init__(self, fd: int = PAYLOAD_FD, limit: int = LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self.received = 0
        self.truncated = False
        self.present = False
        self._thread: threading.Thread | None = None

    def start(self) -> PayloadDrain:
        try:
            mode = os.fstat(self.fd).st_mode
        except OSError:
            return self  # fd 3 not open: the usual case
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return self  # not a payload pipe (an inherited file): leave it alone
        self.present = True
        import threading  # only with a payload pipe: most layers never start this thread

        self._thread = threading.Thread(target=self._drain, name="fd3-payload", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        try:
            while True:
                data = os.read(self.fd, 65536)
                if not data:
                    break
                self.received += len(data)
                if self.received >= self.limit:
                    self.truncated = True
                    break
        except OSError:
            pass
        finally:
            try:  # noqa: SIM105 - contextlib is not worth its import on every layer's start
                os.close(self.fd)
            except OSError:
                pass
