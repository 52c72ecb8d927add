"""Wire size of seekable layers: what chunking and the zstd level cost on the network.

Run: ``make bench-wire`` (or ``python benchmarks/bench_wire.py``); not part of
``make bench``, since level 19 takes minutes. The image is the one ``make
bench`` builds (``common.bench_image``: mkfs.erofs of /usr/share). It is
packed with ``pack`` at chunk sizes 1, 4 and 16 MiB and zstd levels 3, 9 and
19 (``--threads 1``, so pack times compare with single-threaded ``zstd``), plus
single-frame references: ``pack --no-chunk-table``, ``zstd -3``,
``zstd -3 --long`` and ``pack --compression gzip``. For each: blob size, its
ratio to one frame at the same level (``pack --no-chunk-table``), pack time,
and decode time of ``erofs-stream-processor --threads 1`` to /dev/null. Each
figure is one run (``--runs`` for the best of several); the load average is
printed so a busy machine shows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common import WORK, bench_image, have, processor_cmd

MIB = 1 << 20


def _timed(cmd: Sequence[str], stdin: Path, stdout: Path | None, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        with stdin.open("rb") as src:
            out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
            try:
                started = time.perf_counter()
                subprocess.run(list(cmd), stdin=src, stdout=out, check=True)
                best = min(best, time.perf_counter() - started)
            finally:
                if stdout is not None:
                    out.close()  # type: ignore[union-attr]
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="3,9,19")
    parser.add_argument("--chunks", default="1,4,16", help="chunk sizes in MiB")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    chunks = [int(x) for x in args.chunks.split(",")]
    image = bench_image()
    sp = processor_cmd()
    out = WORK / "wire.blob"
    # name, compared with one frame at this level, size, pack s, decode s
    rows: list[tuple[str, int, int, float, float]] = []

    def measure(name: str, level: int, pack: Sequence[str], decode: Sequence[str]) -> int:
        pack_s = _timed(pack, image, out, args.runs)
        size = out.stat().st_size
        decode_s = _timed(decode, out, None, args.runs)
        rows.append((name, level, size, pack_s, decode_s))
        print(f"{name}: {size} bytes, pack {pack_s:.2f} s", file=sys.stderr, flush=True)
        return size

    decode_ours = [*sp, "--threads", "1"]
    base: dict[int, int] = {}
    for level in levels:
        base[level] = measure(
            f"pack --no-chunk-table, level {level} (one frame)",
            level,
            [*sp, "pack", "-", "-o", "-", "--no-chunk-table", "--level", str(level)],
            decode_ours,
        )
        for chunk in chunks:
            measure(
                f"pack --chunk-size {chunk}MiB, level {level}",
                level,
                [*sp, "pack", "-", "-o", "-", "--chunk-size", f"{chunk}MiB", "--level", str(level)],
                decode_ours,
            )
    ref = levels[0]
    if have("zstd"):
        measure(f"zstd -{ref}", ref, ["zstd", f"-{ref}", "-q", "-c"], ["zstd", "-dcq"])
        zstd_long = ["zstd", f"-{ref}", "--long", "-q", "-c"]
        measure(f"zstd -{ref} --long", ref, zstd_long, ["zstd", "-dcq", "--long"])
    gzip = [*sp, "pack", "-", "-o", "-", "--compression", "gzip"]
    measure("pack --compression gzip (ISA-L level 2)", ref, gzip, decode_ours)
    out.unlink()
    load = os.getloadavg()
    print(f"### Wire size: {image.stat().st_size / MIB:.1f} MiB EROFS image ({image.name})\n")
    print(f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; ", end="")
    print(f'best of {args.runs}; "vs one frame": against pack --no-chunk-table at that level.\n')
    print("| layer | blob MiB | vs one frame | pack s | decode s |")
    print("|---|---:|---:|---:|---:|")
    for name, level, size, pack_s, decode_s in rows:
        ratio = f"{(size / base[level] - 1) * 100:+.1f} %"
        print(f"| {name} | {size / MIB:.1f} | {ratio} | {pack_s:.2f} | {decode_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
