"""Faults around the decoder: SIGTERM, a full disk, unreadable stdin, a broken log file,
a hostile fd 3. (containerd's own behaviours, fd 3 as a payload pipe and a reader
that closes early, are the contract's: test_contract.)

Each fault is a function returning a ``FaultResult`` so that
``reliability_report.py`` runs exactly what these tests assert. The
processor is always the real CLI in a subprocess (as containerd runs it),
under a 1 GiB address-space limit, fed real ``mkfs.erofs`` layers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import _reliability_helpers as rh
from tests.processor import limit_address_space, processor_argv, start


def _popen(
    media_type: str | None,
    *args: str,
    stdin: int,
    stdout: int,
    fd3: int | None = None,
    env: dict[str, str] | None = None,
    close_fd: int | None = None,
) -> subprocess.Popen[bytes]:
    """The processor under the address-space cap; ``close_fd`` is closed before exec."""
    limit = limit_address_space()

    def preexec() -> None:
        limit()
        if fd3 is not None:
            os.dup2(fd3, 3)
        if close_fd is not None:
            os.close(close_fd)

    return start(
        processor_argv(rh.decoder_args(media_type, *args)),
        stdin=stdin,
        stdout=stdout,
        env=env,
        preexec_fn=preexec,
        close_fds=fd3 is None,  # fd 3 must survive exec; Python's own fds are not inheritable
    )


def _feed(fd: int, data: bytes, close: bool = True) -> threading.Thread:
    """Write ``data`` to ``fd`` from a thread, ignoring the reader going away."""

    def run() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[: 1 << 20]) :]
        except OSError:
            pass
        finally:
            if close:
                os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_sigterm_handler(pid: int, timeout: float = 20) -> None:
    """Wait until the process catches SIGTERM (``SigCgt`` in /proc), i.e. start-up is over.

    A signal that arrives during interpreter start-up kills the process the
    default way; the property under test is about a decode in progress.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("SigCgt:") and int(line.split()[1], 16) & (
                1 << (signal.SIGTERM - 1)
            ):
                return
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[bytes], started: float, timeout: float) -> rh.FaultResult:
    code = rh.wait_exit(proc, timeout)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    result = rh.FaultResult(code, time.monotonic() - started, stderr)
    if code is None:
        result.problem = f"still running after {timeout} s (killed)"
    elif "Traceback" in stderr:
        result.problem = "traceback on stderr"
    return result


SIGTERM_WHEN = ("blocked reading stdin", "blocked writing stdout", "2-thread pool started")


def sigterm_mid_stream(
    layers: rh.Layers, log_file: Path, when: str = SIGTERM_WHEN[0]
) -> rh.FaultResult:
    """SIGTERM while waiting for input, stuck on a full stdout, or with worker threads busy:
    exit 143 promptly and a log record says so."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()  # never read: a stuck consumer
    started = time.monotonic()
    args = ["--log-file", str(log_file)]
    if when == SIGTERM_WHEN[2]:
        args += ["--threads", "2"]
    proc = _popen(
        rh.ZSTD_ROUTE,
        *args,
        stdin=in_r,
        stdout=out_w if when == "blocked writing stdout" else subprocess.DEVNULL,
    )
    os.close(in_r)
    os.close(out_w)
    feeder = None
    if when == "blocked reading stdin":
        os.write(in_w, layers.zstd[: len(layers.zstd) // 2])  # fits in the pipe buffer
    elif when == "blocked writing stdout":
        feeder = _feed(in_w, layers.padded_zstd)
    else:
        # All 64 frames, but no end of input: the pool has work or waits with it
        # started, whichever the timing gives; either way exit must be prompt.
        feeder = _feed(in_w, layers.many_frames, close=False)
    _wait_for_sigterm_handler(proc.pid)
    time.sleep(0.5)  # let it reach the state under test
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    result = _finish(proc, started, 10)
    if feeder is not None:
        feeder.join(10)
    if feeder is None or when == SIGTERM_WHEN[2]:
        os.close(in_w)
    os.close(out_r)
    result.seconds = time.monotonic() - sent
    if result.problem is None:
        records = _records(log_file)
        if result.exit_code != rh.EXIT_SIGTERM:
            result.problem = f"exit {result.exit_code}, want 143: {result.stderr!r}"
        elif result.seconds > 2:
            result.problem = f"took {result.seconds:.1f} s to stop"
        elif not any(r.get("event") == "terminated" for r in records):
            result.problem = f"no 'terminated' record in the log: {records}"
    return result


def stdout_on_full_disk(layers: rh.Layers) -> rh.FaultResult:
    """stdout is /dev/full (ENOSPC on every write): exit 74 with one clear line."""
    with open("/dev/full", "wb") as full:
        started = time.monotonic()
        in_r, in_w = os.pipe()
        proc = _popen(rh.ZSTD_ROUTE, stdin=in_r, stdout=full.fileno())
        os.close(in_r)
        _feed(in_w, layers.zstd)
        result = _finish(proc, started, 30)
    if result.problem is None:
        lines = result.stderr.splitlines()
        if result.exit_code != rh.EXIT_IO:
            result.problem = f"exit {result.exit_code}, want 74: {result.stderr!r}"
        elif len(lines) != 1 or "No space left on device" not in lines[0]:
            result.problem = f"stderr is not one clear line: {result.stderr!r}"
    return result


STDIN_FAULTS = ("write-only fd (EBADF)", "TCP reset mid-stream (ECONNRESET)", "closed")


def stdin_unreadable(layers: rh.Layers, kind: str, tmp: Path) -> rh.FaultResult:
    """Reading stdin fails (EBADF, ECONNRESET) or stdin is closed: exit 74 with one line."""
    started = time.monotonic()
    peer: socket.socket | None = None
    if kind.startswith("write-only"):
        path = tmp / "write-only"
        path.write_bytes(layers.zstd)
        fd = os.open(path, os.O_WRONLY)
        proc = _popen(rh.ZSTD_ROUTE, stdin=fd, stdout=subprocess.PIPE)
        os.close(fd)
        want = "cannot read the input: Bad file descriptor"
    elif kind.startswith("TCP"):
        with socket.create_server(("127.0.0.1", 0)) as server:
            peer = socket.create_connection(server.getsockname())
            conn, _ = server.accept()
        proc = _popen(rh.ZSTD_ROUTE, stdin=conn.fileno(), stdout=subprocess.PIPE)
        conn.close()
        peer.sendall(layers.zstd[:4096])
        time.sleep(0.3)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST: the processor's next read fails with ECONNRESET
        want = "cannot read the input: Connection reset by peer"
    else:
        proc = _popen(rh.ZSTD_ROUTE, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fd=0)
        want = "stdin is not open"
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    result = _finish(proc, started, 10)
    if result.problem is None:
        lines = result.stderr.splitlines()
        if result.exit_code != rh.EXIT_IO:
            result.problem = f"exit {result.exit_code}, want 74: {result.stderr!r}"
        elif len(lines) != 1 or want not in lines[0]:
            result.problem = f"stderr is not one clear line: {result.stderr!r}"
        elif out:
            result.problem = "wrote output"
    return result


def stdin_is_directory(tmp: Path) -> rh.FaultResult:
    """stdin is a directory: CPython itself refuses to start ("<stdin> is a directory").

    The interpreter checks this in ``init_sys_streams`` before any of the
    program's code runs, so the EISDIR read error cannot be reached from
    Python. What is asserted: a non-zero exit at once, nothing on stdout.
    """
    started = time.monotonic()
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    proc = _popen(rh.ZSTD_ROUTE, stdin=fd, stdout=subprocess.PIPE)
    os.close(fd)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    result = _finish(proc, started, 10)
    if result.problem is None and (result.exit_code in (None, 0) or out):
        result.problem = f"exit {result.exit_code} with {len(out)} bytes of output"
    return result


def stdout_not_open(layers: rh.Layers) -> rh.FaultResult:
    started = time.monotonic()
    proc = _popen(rh.ZSTD_ROUTE, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fd=1)
    assert proc.stdin is not None
    try:
        proc.stdin.write(layers.zstd)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    result = _finish(proc, started, 10)
    if result.problem is None and (
        result.exit_code != rh.EXIT_IO or "stdout is not open" not in result.stderr
    ):
        result.problem = f"exit {result.exit_code}: {result.stderr!r}"
    return result


LOG_FAULTS = (
    "directory missing",
    "path is a directory",
    "disk full (/dev/full)",
    "a FIFO nobody reads",
    "directory missing, and the layer is corrupt",
)


def log_unwritable(layers: rh.Layers, kind: str, tmp: Path) -> rh.FaultResult:
    """The log file cannot be written: the decode still succeeds; stderr says logging is off.

    With a corrupt layer the decode fails as it would anyway (exit 65, its own
    line) and the logging-off line comes with it. A FIFO without a reader
    must not block the open (it used to hang the pull forever).
    """
    path = {
        "directory missing": tmp / "no-such-dir" / "sp.log",
        "path is a directory": tmp,
        "disk full (/dev/full)": Path("/dev/full"),
        "a FIFO nobody reads": tmp / "log.fifo",
        "directory missing, and the layer is corrupt": tmp / "no-such-dir" / "sp.log",
    }[kind]
    if "FIFO" in kind:
        os.mkfifo(path)
    corrupt = "corrupt" in kind
    data = layers.zstd[:-100] if corrupt else layers.zstd
    try:
        outcome = rh.run_decoder(
            data, rh.ZSTD_ROUTE, "--log-file", str(path), "--log-level", "info", timeout=10
        )
    except subprocess.TimeoutExpired:
        return rh.FaultResult(None, 10.0, "", "hung on the log file (killed after 10 s)")
    result = rh.FaultResult(outcome.exit_code, outcome.seconds, outcome.stderr)
    lines = outcome.stderr_lines
    if "Traceback" in outcome.stderr:
        result.problem = "traceback"
    elif corrupt:
        if outcome.exit_code != rh.EXIT_DATA or len(lines) != 2:
            result.problem = f"want exit 65 and two lines: {outcome.stderr!r}"
        elif "logging is off" not in lines[0] or "truncated" not in lines[1]:
            result.problem = f"unclear stderr: {outcome.stderr!r}"
    elif outcome.exit_code != 0 or outcome.stdout != layers.image:
        result.problem = f"decode failed because of the log: {outcome.exit_code} {outcome.stderr!r}"
    elif len(lines) != 1 or "logging is off" not in outcome.stderr:
        result.problem = f"stderr does not say logging is off: {outcome.stderr!r}"
    return result


FD3_KINDS = (
    "pipe, 256 MiB payload",
    "socket, endless payload",
    "sparse 8 GiB file",
    "/dev/zero",
)


def fd3_hostile(layers: rh.Layers, kind: str, tmp: Path) -> rh.FaultResult:
    """fd 3 holds something unexpected or huge: bounded read or ignored, never a hang."""
    stop = threading.Event()
    writer: threading.Thread | None = None
    if kind.startswith("pipe"):
        r, w = os.pipe()
        fd3 = r
        writer = _feed(w, bytes(256 << 20))
    elif kind.startswith("socket"):
        a, b = socket.socketpair()
        fd3 = a.detach()
        sender = b

        def endless() -> None:
            try:
                while not stop.is_set():
                    sender.sendall(bytes(1 << 16))
            except OSError:
                pass
            finally:
                sender.close()

        writer = threading.Thread(target=endless, daemon=True)
        writer.start()
    elif kind.startswith("sparse"):
        path = tmp / "sparse-fd3"
        with open(path, "wb") as f:
            f.truncate(8 << 30)
        fd3 = os.open(path, os.O_RDONLY)
    else:
        fd3 = os.open("/dev/zero", os.O_RDONLY)
    started = time.monotonic()
    in_r, in_w = os.pipe()
    proc = _popen(rh.ZSTD_ROUTE, stdin=in_r, stdout=subprocess.PIPE, fd3=fd3)
    os.close(in_r)
    os.close(fd3)
    _feed(in_w, layers.zstd)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    result = _finish(proc, started, 20)
    stop.set()
    if writer is not None:
        writer.join(10)
        if writer.is_alive():
            result.problem = "the fd 3 writer is still blocked after the processor exited"
    if result.problem is None:
        if result.exit_code != 0 or out != layers.image:
            result.problem = f"exit {result.exit_code}: {result.stderr!r}"
        elif result.seconds > 10:
            result.problem = f"took {result.seconds:.1f} s"
    return result


def _records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> rh.Layers:
    return rh.make_layers(tmp_path_factory.mktemp("fault-layers"))


def _ok(result: rh.FaultResult) -> None:
    assert result.problem is None, result


@pytest.mark.parametrize("when", SIGTERM_WHEN)
def test_sigterm_mid_stream(layers: rh.Layers, when: str, tmp_path: Path) -> None:
    _ok(sigterm_mid_stream(layers, tmp_path / "sp.log", when))


def test_stdout_on_full_disk(layers: rh.Layers) -> None:
    _ok(stdout_on_full_disk(layers))


@pytest.mark.parametrize("kind", STDIN_FAULTS)
def test_stdin_unreadable(layers: rh.Layers, kind: str, tmp_path: Path) -> None:
    _ok(stdin_unreadable(layers, kind, tmp_path))


def test_stdin_is_directory(tmp_path: Path) -> None:
    _ok(stdin_is_directory(tmp_path))


def test_stdout_not_open(layers: rh.Layers) -> None:
    _ok(stdout_not_open(layers))


@pytest.mark.parametrize("kind", LOG_FAULTS)
def test_log_unwritable(layers: rh.Layers, kind: str, tmp_path: Path) -> None:
    _ok(log_unwritable(layers, kind, tmp_path))


@pytest.mark.parametrize("kind", FD3_KINDS)
def test_fd3_hostile(layers: rh.Layers, kind: str, tmp_path: Path) -> None:
    _ok(fd3_hostile(layers, kind, tmp_path))
