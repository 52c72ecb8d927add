"""``payload.PayloadDrain``: a pipe or socket on fd 3 is drained off the main thread, up to a
limit, then closed; anything else there is left alone.

The drain is given a descriptor number of its own for each test (containerd
uses 3); what containerd's side sees of it, through a real processor, is
test_contract's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_processor.payload import PAYLOAD_FD, PayloadDrain

FD = 100  # where each test puts the descriptor under test


@pytest.fixture
def at_fd() -> Iterator[Callable[[int], int]]:
    """Move a descriptor to ``FD`` (as containerd's ExtraFiles puts the payload at 3)."""

    def move(fd: int) -> int:
        os.dup2(fd, FD)
        os.close(fd)
        return FD

    yield move
    with contextlib.suppress(OSError):  # the drain closed it, as it should
        os.close(FD)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _wait_closed(fd: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _is_open(fd):
        assert time.monotonic() < deadline, "the drain never closed its descriptor"
        time.sleep(0.005)


def test_fd3_is_the_payload_descriptor() -> None:
    assert PAYLOAD_FD == 3  # where containerd's ExtraFiles puts it


def test_nothing_on_the_descriptor() -> None:
    assert not _is_open(FD)
    drain = PayloadDrain(FD).start()
    assert (drain.present, drain.received, drain.truncated) == (False, 0, False)


def test_a_payload_pipe_is_drained_then_closed(at_fd: Callable[[int], int]) -> None:
    r, w = os.pipe()
    payload = os.urandom(200_000)
    fd = at_fd(r)
    drain = PayloadDrain(fd).start()
    assert drain.present
    view = memoryview(payload)
    while view:  # the drain reads as we write: more than a pipe buffer never blocks us
        view = view[os.write(w, view) :]
    os.close(w)
    _wait_closed(fd)
    assert drain.received == len(payload) and not drain.truncated


def test_a_payload_over_the_limit_is_cut_off(at_fd: Callable[[int], int]) -> None:
    """Beyond ``limit`` the drain stops reading and closes: the writer gets EPIPE, not a
    pipe that never empties."""
    r, w = os.pipe()
    fd = at_fd(r)
    drain = PayloadDrain(fd, limit=100_000).start()
    written = 0
    with pytest.raises(BrokenPipeError):
        while True:
            written += os.write(w, bytes(65536))
    os.close(w)
    assert drain.truncated and 100_000 <= drain.received <= written
    assert not _is_open(fd)


def test_a_pipe_held_open_and_silent_never_blocks_start(at_fd: Callable[[int], int]) -> None:
    r, w = os.pipe()
    fd = at_fd(r)
    started = time.monotonic()
    drain = PayloadDrain(fd).start()
    assert time.monotonic() - started < 1
    assert drain.present and drain.received == 0
    os.close(w)  # end of the payload: only now does the drain finish
    _wait_closed(fd)
    assert drain.received == 0 and not drain.truncated


def test_a_socket_is_drained_too(at_fd: Callable[[int], int]) -> None:
    ours, theirs = socket.socketpair()
    fd = at_fd(theirs.detach())
    drain = PayloadDrain(fd).start()
    payload = b"\x0a\x04type\x12\x02hi"
    ours.sendall(payload)
    ours.close()
    _wait_closed(fd)
    assert drain.present and drain.received == len(payload)


@pytest.mark.parametrize("what", ["a regular file", "/dev/null"])
def test_an_inherited_file_is_left_alone(
    what: str, at_fd: Callable[[int], int], tmp_path: Path
) -> None:
    """Not a pipe nor a socket: some other descriptor leaked to fd 3; not ours to read."""
    if what == "/dev/null":
        fd = at_fd(os.open("/dev/null", os.O_RDONLY))
    else:
        path = tmp_path / "inherited"
        path.write_bytes(b"someone else's file")
        fd = at_fd(os.open(path, os.O_RDONLY))
    drain = PayloadDrain(fd).start()
    assert (drain.present, drain.received) == (False, 0)
    time.sleep(0.05)
    assert _is_open(fd) and os.lseek(fd, 0, os.SEEK_CUR) == 0
