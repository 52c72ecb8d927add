"""SIGTERM, SIGHUP and SIGINT as an exception, so every ``finally`` runs.

A command that writes a temporary file or directory (``pack``, ``convert``,
``config --merge``) must remove it when it is stopped; with the default
handlers the process just dies and leaves it behind. While ``unwinding()`` is
active the three signals raise ``Signalled`` in the main thread, the stack
unwinds through those ``finally`` blocks, and the command exits 128 + the
signal number, as a shell reports a process killed by it.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from stream_processor.errors import Terminated

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Signalled(Terminated):
    """SIGTERM, SIGHUP or SIGINT arrived: unwind (removing temporaries), exit 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_signalled(signum: int, frame: FrameType | None) -> None:
    raise Signalled(signum)


@contextlib.contextmanager
def unwinding() -> Iterator[None]:
    """The three signals raise ``Signalled`` inside the block; the previous handlers are
    put back after it. Handlers can only be set in the main thread: elsewhere, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_signalled) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def unwinds_on_signals(run: Callable[[Any], int]) -> Callable[[Any], int]:
    """Wrap a command's ``run``: the three signals unwind it and give 128 + signum.

    The handlers are installed only while ``run`` runs, so importing a command
    changes nothing.
    """

    @functools.wraps(run)
    def wrapper(args: Any) -> int:
        try:
            with unwinding():
                return run(args)
        except Signalled as exc:
            return exc.exit_code

    return wrapper
