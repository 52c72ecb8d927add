"""The fuzzers' seed corpus: real ``mkfs.erofs`` images wrapped every supported way.

A corpus entry is one byte naming the route (an index into ``ROUTES``)
followed by the layer bytes, so one fuzz target covers every media-type
route and libFuzzer can mutate the route too.
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


def encode(media_type: str | None, data: bytes) -> bytes:
    return bytes([ROUTES.index(media_type)]) + data


def decode_entry(entry: bytes) -> tuple[str | None, bytes]:
    """Split a corpus entry into (media type, layer bytes); any first byte is a route."""
    if not entry:
        return None, b""
    return ROUTES[entry[0] % len(ROUTES)], entry[1:]


def write_corpus(directory: Path, seeds: list[rh.Seed]) -> list[Path]:
    """Write every seed as a corpus file; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = directory / f"seed-{seed.name}"
        path.write_bytes(encode(seed.media_type, seed.data))
        paths.append(path)
    return paths
