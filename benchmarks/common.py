"""Shared pieces of the benchmarks: the test image, the containerd-like consumer, timing.

The image is a real EROFS image built by mkfs.erofs from a real directory
tree (``/usr/share`` by default, ``BENCH_TREE`` to override), cached under
``benchmarks/work/``. The consumer reads 32 KiB at a time, hashes with
SHA-256 and writes to a file, like containerd's erofs differ.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
MIN_IMAGE = 200 * 10**6

CONSUMER = """
import hashlib, os, sys
h = hashlib.sha256()
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
read = sys.stdin.buffer.raw.read
while True:
    b = read(32768)
    if not b:
        break
    h.update(b)
    os.write(out, b)
print(h.hexdigest())
"""


def processor_cmd() -> list[str]:
    """The installed console script next to this interpreter, or ``python -m``.

    The package is byte-compiled first, as ``pip install`` does: the editable
    install of ``make install`` does not, and with PYTHONDONTWRITEBYTECODE set
    every start would compile the changed modules again (a few ms each).
    """
    import compileall

    compileall.compile_dir(str(ROOT / "stream_processor"), quiet=1)
    script = Path(sys.executable).parent / "erofs-stream-processor"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "stream_processor"]


def bench_image() -> Path:
    """A >= 200 MB real EROFS image, built once and cached."""
    WORK.mkdir(parents=True, exist_ok=True)
    image = WORK / "bench.erofs"
    if image.exists() and image.stat().st_size >= MIN_IMAGE:
        return image
    tree = os.environ.get("BENCH_TREE", "/usr/share")
    tmp = image.with_suffix(".tmp")
    subprocess.run(
        ["mkfs.erofs", "--quiet", "-T0", "-U6e2c7f3a-1b1d-4c55-9a57-3f7c6a1d2e10", str(tmp), tree],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tmp.rename(image)
    if image.stat().st_size < MIN_IMAGE:
        sys.exit(f"{tree} makes only a {image.stat().st_size} byte image; set BENCH_TREE")
    return image


def cached(path: Path, make: Sequence[str], source: Path) -> Path:
    """Run ``make`` (reading ``source`` on stdin, writing ``path``) unless ``path`` exists."""
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".tmp")
        with source.open("rb") as src, tmp.open("wb") as dst:
            subprocess.run(list(make), stdin=src, stdout=dst, check=True)
        tmp.rename(path)
    return path


def pipeline_seconds(
    producer: Sequence[str], stdin: Path, env: dict[str, str] | None = None
) -> float:
    """Wall time of ``producer < stdin | consumer`` (the consumer writes to WORK)."""
    out = WORK / "consumer.out"
    full_env = dict(os.environ, **(env or {}))
    started = time.perf_counter()
    with stdin.open("rb") as src:
        prod = subprocess.Popen(list(producer), stdin=src, stdout=subprocess.PIPE, env=full_env)
        assert prod.stdout is not None
        cons = subprocess.run(
            [sys.executable, "-c", CONSUMER, str(out)], stdin=prod.stdout, capture_output=True
        )
        prod.stdout.close()
        code = prod.wait()
    elapsed = time.perf_counter() - started
    if code != 0 or cons.returncode != 0:
        raise SystemExit(f"pipeline {producer} failed: {code} {cons.stderr.decode()}")
    return elapsed


def to_devnull_seconds(cmd: Sequence[str], stdin: Path, env: dict[str, str] | None = None) -> float:
    full_env = dict(os.environ, **(env or {}))
    started = time.perf_counter()
    with stdin.open("rb") as src:
        subprocess.run(list(cmd), stdin=src, stdout=subprocess.DEVNULL, check=True, env=full_env)
    return time.perf_counter() - started


def peak_rss_mib(cmd: Sequence[str], stdin: Path, env: dict[str, str] | None = None) -> float:
    """Peak resident set size of one run of ``cmd`` (stdout to /dev/null)."""
    full_env = dict(os.environ, **(env or {}))
    with stdin.open("rb") as src:
        proc = subprocess.Popen(list(cmd), stdin=src, stdout=subprocess.DEVNULL, env=full_env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return usage.ru_maxrss / 1024


def median(fn: Callable[[], float], runs: int) -> float:
    return float(statistics.median(fn() for _ in range(runs)))


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def table(title: str, rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
