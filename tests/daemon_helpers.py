"""Starting and stopping the private containerd daemons the daemon test modules run.

Shared by test_containerd_daemon (Debian's 1.6), test_containerd_2x (2.1 from
``make tools``), test_containerd_23 (2.3 from ``EROFS_SP_CONTAINERD23_BIN``) and
test_config_merge, so no test module imports another.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT

CONTAINERD_21_BIN = ROOT / ".tools" / "containerd" / "bin"
BIN_ENV = "EROFS_SP_CONTAINERD23_BIN"


def wait_until_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, timeout: float
) -> str | None:
    """None once ``ready()``; else why not (exited, or no answer in time) with the log's tail."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            what = (
                "could not start" if proc.poll() is not None else f"did not answer in {timeout} s"
            )
            return f"{what}: {log.read_text(errors='replace')[-1500:]}"
        time.sleep(0.1)
    return None


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if containerd has not exited within 15 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
