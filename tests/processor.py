"""Start the processor, one way for every test: as containerd starts it.

containerd (``core/diff/stream_unix.go``) runs ``path args...`` with its own
environment plus the configured ``env`` and
``STREAM_PROCESSOR_MEDIATYPE=<media type>``; a goroutine copies the blob into
stdin; the differ reads stdout through a SHA-256 digester in 32 KiB reads;
stderr is collected for the error message; a payload, when the client gave
one, arrives on fd 3 (``cmd.ExtraFiles``); and ``Close`` closes the stdout
reader and kills the process.

``processor_argv`` and ``processor_env`` are that command line and
environment (this checkout's package, none of the tester's own
``EROFS_SP_*`` settings); ``start`` starts it, for everything here and for
tests that need stdio of their own (test_faults, test_load). ``run_cli``
runs it to the end on a whole stdin and keeps what it printed, for tests of
one command's behaviour. ``run_processor`` reproduces each part of
``NewBinaryProcessor`` so the contract tests can assert on digest, exit
status, stderr, open descriptors, child processes and peak memory of one
real run.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stream_processor.mediatypes import ENV_MEDIA_TYPE
from stream_processor.payload import PAYLOAD_FD

ROOT = Path(__file__).resolve().parent.parent
READ_SIZE = 32 * 1024  # the erofs differ's io.CopyBuffer size
FEED_SIZE = 64 * 1024
AS_LIMIT = 1 << 30  # the address-space cap for decoders fed hostile input: 1 GiB


def processor_argv(
    args: Sequence[str] = (),
    *,
    as_limit: int | None = None,
    interpreter: Sequence[str] = (),
) -> list[str]:
    """The processor as containerd's ``path`` + ``args`` would start it.

    ``interpreter`` options go to Python itself (``-X importtime``). With
    ``as_limit`` its address space is capped by util-linux ``prlimit`` before
    exec (safe from a threaded parent, unlike ``limit_address_space``).
    """
    prefix = ["prlimit", f"--as={as_limit}", "--"] if as_limit is not None else []
    return [*prefix, sys.executable, *interpreter, "-m", "stream_processor", *args]


def limit_address_space(limit: int = AS_LIMIT) -> Callable[[], None]:
    """A ``preexec_fn`` capping the child's address space (a hostile layer cannot eat the node).

    Only for processes started from a single-threaded parent: ``preexec_fn``
    is not safe while other threads run (it crashed pytest once, in a thread
    pool). Threaded callers use ``processor_argv(as_limit=...)``.
    """

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def processor_env(
    env: Mapping[str, str] | None = None,
    *,
    media_type: str | None = None,
    daemon_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """containerd's environment plus ``env`` plus the media type, like ``cmd.Env``.

    ``daemon_env`` stands for containerd's own environment; by default this
    test process's, without the media type and the ``EROFS_SP_*`` settings a
    developer may have exported, with PYTHONPATH pointing at the checkout.
    """
    if daemon_env is None:
        base = {
            k: v
            for k, v in os.environ.items()
            if k != ENV_MEDIA_TYPE and not k.startswith("EROFS_SP_")
        }
        base["PYTHONPATH"] = str(ROOT)
    else:
        base = dict(daemon_env)
    base.update(env or {})
    if media_type is not None:
        base[ENV_MEDIA_TYPE] = media_type
    return base


def start(
    argv: Sequence[str],
    *,
    stdin: int | None = subprocess.PIPE,
    stdout: int | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    media_type: str | None = None,
    daemon_env: Mapping[str, str] | None = None,
    cwd: Path | str = ROOT,
    preexec_fn: Callable[[], None] | None = None,
    close_fds: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (``processor_argv``, or a configured path and args) in ``processor_env``,
    with stderr piped: every test's processor starts here."""
    return subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=processor_env(env, media_type=media_type, daemon_env=daemon_env),
        cwd=cwd,
        preexec_fn=preexec_fn,
        close_fds=close_fds,
    )


def run_cli(
    args: Sequence[str] = (),
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    *,
    as_limit: int | None = None,
    interpreter: Sequence[str] = (),
    stdout: int = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``erofs-stream-processor args...`` on ``stdin`` to the end; keep its stdout and stderr.

    ``stdout=subprocess.DEVNULL`` discards a large output instead of keeping it.
    """
    argv = processor_argv(args, as_limit=as_limit, interpreter=interpreter)
    with start(argv, stdout=stdout, env=env) as proc:
        try:
            out, err = proc.communicate(stdin, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------- as containerd's differ


class Payload(enum.Enum):
    """The states of fd 3 containerd can produce besides a payload written in full."""

    ABSENT = "absent"  # no payload for this processor id: fd 3 not open (the usual case)
    EMPTY = "empty"  # a payload pipe that is closed without data
    HELD = "held"  # a payload pipe its writer holds open, writing nothing, until the end


@dataclass
class Observation:
    """What one run looked like from containerd's side."""

    argv: list[str]
    returncode: int = 0
    digest: str = ""
    out_bytes: int = 0
    stderr: bytes = b""
    stdin_written: int = 0
    stdin_error: str | None = None
    payload_written: int = 0
    payload_error: str | None = None
    peak_rss_kib: int = 0  # the child's own VmHWM, last read before it exited
    rusage_maxrss_kib: int = 0  # wait4's ru_maxrss: also counts the parent's RSS at fork
    fd3_at_start: str | None = None  # what fd 3 of the processor pointed to when it started
    payload_pipe: str | None = None  # "pipe:[inode]" of the payload pipe, when there was one
    fds_mid_run: list[str] = field(default_factory=list)
    children_mid_run: list[int] = field(default_factory=list)
    closed_early: bool = False
    seconds: float = 0.0  # from start to exit
    seconds_after_close: float = 0.0  # from closing the reader early to the process's end
    timed_out: bool = False
    pid: int = 0

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.decode("utf-8", "replace").splitlines()


def _chunks(source: bytes | Path) -> Callable[[], bytes]:
    if isinstance(source, bytes):
        view = memoryview(source)
        pos = 0

        def from_bytes() -> bytes:
            nonlocal pos
            piece = bytes(view[pos : pos + FEED_SIZE])
            pos += len(piece)
            return piece

        return from_bytes
    fh = open(source, "rb")  # noqa: SIM115 - closed by the feeder when it returns b""

    def from_file() -> bytes:
        piece = fh.read(FEED_SIZE)
        if not piece:
            fh.close()
        return piece

    return from_file


def _proc_fds(pid: int) -> list[str]:
    try:
        return sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
    except OSError:
        return []


def _proc_children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found.extend(int(x) for x in text.split())
    return found


def run_processor(
    source: bytes | Path,
    media_type: str | None,
    *,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    daemon_env: Mapping[str, str] | None = None,
    payload: bytes | Payload = Payload.ABSENT,
    close_after: int | None = None,
    kill_on_close: bool = True,
    inspect: bool = False,
    timeout: float = 60.0,
) -> Observation:
    """Run the processor once on ``source`` as containerd would; see the module docstring.

    ``close_after``: stop reading after that many output bytes, close the
    reader and (``kill_on_close``) kill the process, as ``binaryProcessor.Close``.
    ``inspect``: after the first stdin chunk, wait until the processor has only
    stdio (and at most fd 3) open, and record its descriptors and children.
    """
    cmd = list(argv or processor_argv())
    obs = Observation(argv=cmd)
    began = time.monotonic()
    payload_r = payload_w = -1
    preexec: Callable[[], None] | None = None
    if payload is not Payload.ABSENT:
        # Python's pass_fds keeps a descriptor at its parent number and closes
        # everything else after preexec_fn runs, so it cannot put the pipe at
        # fd 3 as Go's ExtraFiles does; dup2 it there and close the rest here.
        payload_r, payload_w = os.pipe()
        obs.payload_pipe = f"pipe:[{os.fstat(payload_r).st_ino}]"
        read_end = payload_r

        def preexec() -> None:
            if read_end != PAYLOAD_FD:
                os.dup2(read_end, PAYLOAD_FD)
            os.set_inheritable(PAYLOAD_FD, True)  # dup2(3, 3) would keep O_CLOEXEC
            os.closerange(PAYLOAD_FD + 1, 65536)

    proc = start(
        cmd,
        env=env,
        media_type=media_type,
        daemon_env=daemon_env,
        cwd="/",  # where systemd starts containerd; imports must not rely on the cwd
        close_fds=preexec is None,
        preexec_fn=preexec,
    )
    obs.pid = proc.pid
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    threads: list[threading.Thread] = []
    exited = threading.Event()

    if payload_r >= 0:
        os.close(payload_r)
        data = payload if isinstance(payload, bytes) else b""

        def write_payload() -> None:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(payload_w, view[:FEED_SIZE])
                    obs.payload_written += n
                    view = view[n:]
                if payload is Payload.HELD:
                    exited.wait()  # a writer that holds the pipe open until the process ends
            except OSError as exc:
                obs.payload_error = type(exc).__name__
            finally:
                os.close(payload_w)

        threads.append(threading.Thread(target=write_payload, name="payload", daemon=True))

    next_chunk = _chunks(source)

    def feed() -> None:
        first = True
        try:
            obs.fd3_at_start = os.readlink(f"/proc/{proc.pid}/fd/{PAYLOAD_FD}")
        except OSError:
            obs.fd3_at_start = None
        try:
            while True:
                piece = next_chunk()
                if not piece:
                    break
                stdin.write(piece)
                stdin.flush()
                obs.stdin_written += len(piece)
                if first and inspect:
                    _inspect(proc.pid, obs)
                first = False
        except OSError as exc:  # the processor stopped reading (it failed, or was killed)
            obs.stdin_error = type(exc).__name__
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    err_parts: list[bytes] = []

    def drain_stderr() -> None:
        err_parts.append(stderr.read())

    threads.append(threading.Thread(target=feed, name="stdin", daemon=True))
    threads.append(threading.Thread(target=drain_stderr, name="stderr", daemon=True))
    watchdog = threading.Timer(timeout, _kill, args=(proc, obs))
    watchdog.start()
    sampler = threading.Thread(
        target=_sample_peak_rss, args=(proc.pid, obs, exited), name="rss", daemon=True
    )
    sampler.start()
    for t in threads:
        t.start()

    digest = hashlib.sha256()
    out_fd = stdout.fileno()
    try:
        while True:
            piece = os.read(out_fd, READ_SIZE)
            if not piece:
                break
            digest.update(piece)
            obs.out_bytes += len(piece)
            if close_after is not None and obs.out_bytes >= close_after:
                obs.closed_early = True
                break
    finally:
        stdout.close()
        closed = time.monotonic()
        if obs.closed_early and kill_on_close:
            _kill(proc, None)
        _, status, usage = os.wait4(proc.pid, 0)
        obs.seconds = time.monotonic() - began
        if obs.closed_early:
            obs.seconds_after_close = time.monotonic() - closed
        proc.returncode = os.waitstatus_to_exitcode(status)
        exited.set()
        sampler.join(timeout=10)
        watchdog.cancel()
        for t in threads:
            t.join(timeout=10)
        stderr.close()
    obs.returncode = proc.returncode
    obs.rusage_maxrss_kib = usage.ru_maxrss
    obs.digest = digest.hexdigest()
    obs.stderr = b"".join(err_parts)
    return obs


def _sample_peak_rss(pid: int, obs: Observation, exited: threading.Event) -> None:
    """Follow the child's VmHWM (its own high-water RSS; monotonic) until it is gone.

    ``ru_maxrss`` from ``wait4``/``RUSAGE_CHILDREN`` is no use here: Linux
    carries the forking parent's RSS into the child's maxrss across exec, so a
    big pytest process would be measured instead of the processor.
    """
    path = f"/proc/{pid}/status"
    while not exited.is_set():
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        obs.peak_rss_kib = max(obs.peak_rss_kib, int(line.split()[1]))
                        break
        except OSError:
            return
        exited.wait(0.005)


def _kill(proc: subprocess.Popen[bytes], obs: Observation | None) -> None:
    if obs is not None:
        obs.timed_out = True
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)


def _inspect(pid: int, obs: Observation, wait: float = 5.0) -> None:
    """Record the processor's fds once only stdio (and maybe fd 3) remain, or after ``wait``."""
    deadline = time.monotonic() + wait
    while True:
        fds = _proc_fds(pid)
        if set(fds) <= {"0", "1", "2"} or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    obs.fds_mid_run = fds
    obs.children_mid_run = _proc_children(pid)


def open_fds() -> set[str]:
    """This process's open descriptors (to show a run leaked none)."""
    return set(os.listdir("/proc/self/fd"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
