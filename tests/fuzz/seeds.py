"""The fuzzers' seed corpus: real ``mkfs.erofs`` images wrapped every supported way.

A corpus entry is one byte naming the route (an index into ``ROUTES``,
with ``THREADS_BIT`` asking for the two-thread decoder) followed by the
layer bytes, so one fuzz target covers every media-type route and libFuzzer
can mutate the route too.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests import _reliability_helpers as rh

ROUTES: tuple[str | None, ...] = (
    None,  # no media type: compression detected, EROFS expected
    rh.ZSTD_ROUTE,
    rh.GZIP_ROUTE,
    rh.RAW_ROUTE,
    rh.TAR_ZSTD_ROUTE,
    rh.TAR_GZIP_ROUTE,
    "application/vnd.example.image.erofs+zstd",  # the PR 12506 '*.erofs+zstd' family
)


def default_workdir() -> Path:
    """Where the seed image is built once and reused (outside the repository)."""
    base = os.environ.get("EROFS_SP_FUZZ_WORK") or f"/tmp/erofs-sp-fuzz-{os.getuid()}"
    return Path(base)


def load_seeds(workdir: Path | None = None) -> list[rh.Seed]:
    """The seeds of ``_reliability_helpers.build_seeds`` for one real image and one real tar."""
    work = workdir or default_workdir()
    return rh.build_seeds(rh.make_image(work), rh.make_tar(work))


THREADS_BIT = 0x80  # set: decode with two threads (the parallel zstd frame decoder)


def encode(media_type: str | None, data: bytes, threads: int = 1) -> bytes:
    flag = THREADS_BIT if threads > 1 else 0
    return bytes([ROUTES.index(media_type) | flag]) + data


def decode_entry(entry: bytes) -> tuple[str | None, int, bytes]:
    """Split a corpus entry into (media type, threads, layer); any first byte is valid."""
    if not entry:
        return None, 1, b""
    threads = 2 if entry[0] & THREADS_BIT else 1
    return ROUTES[(entry[0] & ~THREADS_BIT) % len(ROUTES)], threads, entry[1:]


def write_corpus(directory: Path, seeds: list[rh.Seed]) -> list[Path]:
    """Write every seed as a corpus file; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        for threads in (1, 2):
            path = directory / f"seed-{seed.name}-t{threads}"
            path.write_bytes(encode(seed.media_type, seed.data, threads))
            paths.append(path)
    return paths
