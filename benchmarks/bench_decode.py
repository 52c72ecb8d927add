"""Issue 2 targets: the decoder against its peers, measured in the same run.

* zstd: wall time <= 1.05 x `zstd -dc` in the same pipeline (containerd-like
  consumer), and the floor (`cat` of the raw image into the same consumer);
* gzip: wall time <= 0.67 x `unpigz -dc` in the same pipeline;
* start-up: a tiny erofs+zstd layer end to end <= 2.5 x `python -c pass`
  (median of 15 runs);
* peak RSS <= 64 MiB.

Run: `make bench` (all benchmarks) or `.venv/bin/python benchmarks/bench_decode.py`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    WORK,
    bench_image,
    cached,
    median,
    peak_rss_mib,
    pipeline_seconds,
    processor_cmd,
    table,
)

RUNS = 3
ZSTD_MT = {"STREAM_PROCESSOR_MEDIATYPE": "application/vnd.erofs.layer.v1+zstd"}
GZIP_MT = {"STREAM_PROCESSOR_MEDIATYPE": "application/vnd.erofs.layer.v1+gzip"}


def startup_ms(cmd: list[str], stdin: Path | None) -> float:
    def once() -> float:
        src = stdin.open("rb") if stdin else subprocess.DEVNULL
        started = time.perf_counter()
        subprocess.run(cmd, stdin=src, stdout=subprocess.DEVNULL, check=True)
        elapsed = time.perf_counter() - started
        if stdin:
            src.close()  # type: ignore[union-attr]
        return elapsed * 1000

    once()  # warm the page cache
    return median(once, 15)


def tiny_layer() -> Path:
    tiny = WORK / "tiny.erofs.zst"
    if tiny.exists():
        return tiny
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "t"
        tree.mkdir()
        (tree / "hello").write_text("hello\n")
        image = Path(tmp) / "tiny.erofs"
        subprocess.run(["mkfs.erofs", "--quiet", str(image), str(tree)], check=True)
        cached(tiny, ["zstd", "-q", "-c"], image)
    assert tiny.stat().st_size <= 64 * 1024
    return tiny


def main() -> None:
    image = bench_image()
    zst = cached(WORK / "bench.erofs.zst", ["zstd", "-q", "-c", "-3", "-T0"], image)
    gz = cached(WORK / "bench.erofs.gz", ["pigz", "-c", "-6"], image)
    proc = processor_cmd()
    size_mb = image.stat().st_size / 1e6
    print(
        f"image: {size_mb:.0f} MB EROFS ({image}), zstd blob {zst.stat().st_size / 1e6:.0f} MB, "
        f"gzip blob {gz.stat().st_size / 1e6:.0f} MB; median of {RUNS}",
        file=sys.stderr,
    )

    floor = median(lambda: pipeline_seconds(["cat"], image), RUNS)
    zstd_peer = median(lambda: pipeline_seconds(["zstd", "-dc"], zst), RUNS)
    zstd_ours = median(lambda: pipeline_seconds(proc, zst, ZSTD_MT), RUNS)
    pigz_peer = median(lambda: pipeline_seconds(["unpigz", "-dc"], gz), RUNS)
    gzip_ours = median(lambda: pipeline_seconds(proc, gz, GZIP_MT), RUNS)
    tiny = tiny_layer()
    py_pass = startup_ms([sys.executable, "-c", "pass"], None)
    start = startup_ms(proc, tiny)
    rss_zstd = peak_rss_mib(proc, zst, ZSTD_MT)
    rss_gzip = peak_rss_mib(proc, gz, GZIP_MT)

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    rows = [
        [
            "zstd, containerd-like consumer",
            f"{zstd_ours:.2f} s",
            f"`zstd -dc` {zstd_peer:.2f} s",
            f"{zstd_ours / zstd_peer:.2f}",
            "<= 1.05",
            verdict(zstd_ours <= 1.05 * zstd_peer),
        ],
        ["floor: `cat` raw image into the consumer", f"{floor:.2f} s", "", "", "", ""],
        [
            "gzip, containerd-like consumer",
            f"{gzip_ours:.2f} s",
            f"`unpigz -dc` {pigz_peer:.2f} s",
            f"{gzip_ours / pigz_peer:.2f}",
            "<= 0.67",
            verdict(gzip_ours <= 0.67 * pigz_peer),
        ],
        [
            "start-up, tiny erofs+zstd layer",
            f"{start:.0f} ms",
            f"`python -c pass` {py_pass:.0f} ms",
            f"{start / py_pass:.2f}",
            "<= 2.5",
            verdict(start <= 2.5 * py_pass),
        ],
        ["peak RSS, zstd", f"{rss_zstd:.0f} MiB", "", "", "<= 64 MiB", verdict(rss_zstd <= 64)],
        ["peak RSS, gzip", f"{rss_gzip:.0f} MiB", "", "", "<= 64 MiB", verdict(rss_gzip <= 64)],
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(
        table(
            f"Decoder ({size_mb:.0f} MB image; {machine})",
            rows,
            ["what", "ours", "peer", "ratio", "target", ""],
        )
    )


if __name__ == "__main__":
    main()
