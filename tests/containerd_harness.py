"""containerd's side of the daemon tests: a private registry, the processor's log records.

Starting the processor itself is ``tests.processor``'s job.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- a local registry


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    """A private CNCF distribution registry (Debian's ``docker-registry``) on 127.0.0.1.

    Plain HTTP on a random port with its own storage directory, so pushes
    and pulls go through the same registry API a node pulls from, with no
    network and nothing shared with other tests.
    """

    host: str
    process: subprocess.Popen[bytes]
    base: Path

    def push(self, layout: Path, tag: str, name: str, *, all_images: bool = True) -> str:
        """``skopeo copy`` the layout's ``tag`` to ``name:tag`` here; returns the reference."""
        ref = f"{self.host}/{name}:{tag}"
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if all_images:
            cmd.append("--all")
        cmd += [f"oci:{layout}:{tag}", f"docker://{ref}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"skopeo copy to {ref} failed: {proc.stderr.strip()}")
        return ref

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(binary: str, base: Path, timeout: float = 15.0) -> Registry:
    """Start ``docker-registry serve`` with a config of its own under ``base``."""
    import urllib.request

    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    config = base / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(base / "registry.log", "wb")  # noqa: SIM115 - kept for the registry's lifetime
    proc = subprocess.Popen(
        [binary, "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    registry = Registry(f"127.0.0.1:{port}", proc, base)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=1) as answer:
                if answer.status == 200:
                    return registry
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            registry.stop()
            text = (base / "registry.log").read_text(errors="replace")[-800:]
            raise AssertionError(f"docker-registry did not start: {text}")
        time.sleep(0.1)


def log_records(path: Path) -> list[dict[str, Any]]:
    """The processor's JSON log records in ``path`` (none if it was never written)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
