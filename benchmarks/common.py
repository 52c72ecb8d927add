"""Shared pieces of the benchmarks: the test image, the containerd-like consumer, timing.

The image is a real EROFS image built by mkfs.erofs from a real directory
tree (``/usr/share`` by default, ``BENCH_TREE`` to override), cached under
``benchmarks/work/``. Every decoder is fed and drained as containerd does it
(docs/stream-processor-contract.md): ``dd bs=32k`` writes the blob into the
stdin pipe, and a compiled consumer (``consumer.c``) reads 32 KiB at a time,
hashes with SHA-256 and writes to a file, as the erofs differ's ``io.Copy``
does. The processor is started as the generated containerd config starts it.
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

CONSUMER_SOURCE = HERE / "consumer.c"
FEED_BLOCK = "32k"  # containerd feeds stdin from a goroutine, 32 KiB at a time


def consumer() -> Path:
    """The containerd-like consumer (``consumer.c``: 32 KiB reads, OpenSSL SHA-256, a file),
    compiled with gcc against libcrypto into ``WORK`` when missing or older than its source."""
    WORK.mkdir(parents=True, exist_ok=True)
    binary = WORK / "consumer"
    if not binary.exists() or binary.stat().st_mtime < CONSUMER_SOURCE.stat().st_mtime:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise SystemExit("the benchmarks need gcc to build their consumer (consumer.c)")
        tmp = binary.with_suffix(".tmp")
        subprocess.run([cc, "-O2", "-o", str(tmp), str(CONSUMER_SOURCE), "-lcrypto"], check=True)
        tmp.rename(binary)
    return binary


def feeder(path: Path) -> list[str]:
    """containerd's side of stdin: the blob written into the pipe 32 KiB at a time."""
    return ["dd", f"if={path}", f"bs={FEED_BLOCK}", "status=none"]


INSTALLED = WORK / "installed"


def installed_python() -> Path:
    """The interpreter of a plain (not editable) ``pip install`` of this tree, as a node
    gets it, made once per ``make bench`` process under ``benchmarks/work/installed``.

    ``make install``'s editable install adds a ``.pth`` finder that every interpreter
    start loads (~10 ms here, for ``python -c pass`` too), and its sources are not
    byte-compiled: start-up figures taken there describe neither side as a user has it.
    """
    python = INSTALLED / "bin" / "python"
    if os.environ.get("_SP_BENCH_INSTALLED") != str(python):
        shutil.rmtree(INSTALLED, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(INSTALLED)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
            check=True,
        )
        os.environ["_SP_BENCH_INSTALLED"] = str(python)  # the child benchmarks reuse it
    return python


def registered_processor() -> tuple[list[str], dict[str, str]]:
    """The processor exactly as a generated containerd config starts it: ``path`` +
    ``args``, with ``env`` added to the environment.

    Runs ``config`` of the installed copy (``installed_python``) as a user of the
    README would and reads the entry it prints.
    """
    import tomllib

    cli = [str(installed_python().parent / "erofs-stream-processor")]
    text = subprocess.run(
        [*cli, "config", "--containerd-version", "2.3"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    entry = next(iter(tomllib.loads(text)["stream_processors"].values()))
    env = dict(item.split("=", 1) for item in entry.get("env", []))
    return [entry["path"], *entry.get("args", [])], env


def processor_cmd() -> list[str]:
    """The registered command line (see ``registered_processor``), for benchmarks that
    add their own environment; PYTHONPATH from the registration is kept in ``os.environ``."""
    cmd, env = registered_processor()
    if "PYTHONPATH" in env:
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    return cmd


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
    producer: Sequence[str] | None,
    stdin: Path,
    env: dict[str, str] | None = None,
    expect: str | None = None,
) -> float:
    """Wall time of ``dd bs=32k < stdin | producer | consumer`` (the consumer writes to
    WORK); with ``producer=None`` the feeder writes straight into the consumer (the
    floor). ``expect``: the SHA-256 the consumer must have seen."""
    out = WORK / "consumer.out"
    full_env = dict(os.environ, **(env or {}))
    started = time.perf_counter()
    feed = subprocess.Popen(feeder(stdin), stdout=subprocess.PIPE)
    assert feed.stdout is not None
    stages = [feed]
    upstream = feed.stdout
    if producer is not None:
        prod = subprocess.Popen(
            list(producer), stdin=upstream, stdout=subprocess.PIPE, env=full_env
        )
        upstream.close()
        assert prod.stdout is not None
        stages.append(prod)
        upstream = prod.stdout
    cons = subprocess.run([str(consumer()), str(out)], stdin=upstream, capture_output=True)
    upstream.close()
    codes = [stage.wait() for stage in stages]
    elapsed = time.perf_counter() - started
    if any(codes) or cons.returncode != 0:
        raise SystemExit(f"pipeline {producer} failed: {codes} {cons.stderr.decode()}")
    if expect is not None and cons.stdout.decode().strip() != expect:
        raise SystemExit(f"pipeline {producer} produced the wrong bytes")
    return elapsed


def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
