"""Shared fixtures: real EROFS images made by mkfs.erofs (the CLI runs through tests.processor).

Nothing here imitates the format: every image comes from Debian's erofs-utils.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from stream_processor.source import Source

ROOT = Path(__file__).resolve().parent.parent
FIXED_UUID = "6e2c7f3a-1b1d-4c55-9a57-3f7c6a1d2e10"
FIXED_TIME = "1700000000"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make install` (.ci/install-deps)")
    return path


TAR_MKFS_CANDIDATES = (
    os.environ.get("EROFS_SP_TEST_TAR_MKFS", ""),
    str(ROOT / ".tools" / "erofs-utils" / "bin" / "mkfs.erofs"),  # .ci/fetch-erofs-utils
    "mkfs.erofs",
)


def require_fetched(path: Path, script: str) -> None:
    """Skip, saying how to get it, when a tool that ``script`` fetches into .tools/ is missing.

    ``make test`` runs the fetch scripts; without network they fail and these
    tests skip, unless ``EROFS_SP_REQUIRE_FETCHED=1`` (set by CI) makes that a
    failure.
    """
    if path.exists():
        return
    message = f"{path} is missing; run {script} (make test does)"
    if os.environ.get("EROFS_SP_REQUIRE_FETCHED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def tar_mode_mkfs() -> str:
    """A ``mkfs.erofs`` from erofs-utils >= 1.8, for convert's ``tar`` builder.

    Debian 12 ships 1.5; ``.ci/fetch-erofs-utils`` puts trixie's 1.8 under
    ``.tools/``; ``EROFS_SP_TEST_TAR_MKFS`` or a new enough ``mkfs.erofs`` on
    PATH serve too.
    """
    from stream_processor.convert.erofsbuild import find_mkfs

    for candidate in TAR_MKFS_CANDIDATES:
        if candidate and shutil.which(candidate) and find_mkfs(candidate).streams_tar:
            return candidate
    require_fetched(Path(TAR_MKFS_CANDIDATES[1]), ".ci/fetch-erofs-utils")
    pytest.fail(f"{TAR_MKFS_CANDIDATES[1]} is not erofs-utils >= 1.8")


def make_tree(root: Path, scale: int = 1) -> Path:
    """A small but varied directory tree: text, binary, empty, nested, links."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "os-release").write_text('NAME="sample"\nVERSION_ID=1\n')
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    tool = root / "usr" / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho sample\n")
    tool.chmod(0o755)
    data = root / "usr" / "share" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(8 * scale):
        (data / f"blob{i}.bin").write_bytes(os.urandom(1000 + 3000 * i))
        (data / f"text{i}.txt").write_text((f"line {i} of a compressible file\n") * 400)
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("usr/bin/tool")
    os.link(tool, root / "usr" / "bin" / "tool-hardlink")
    return root


def mkfs_erofs(tree: Path, image: Path, *extra: str) -> Path:
    """Build an image with real mkfs.erofs, reproducibly (fixed time and UUID)."""
    require_tool("mkfs.erofs")
    subprocess.run(
        [
            "mkfs.erofs",
            "--quiet",
            f"-T{FIXED_TIME}",
            f"-U{FIXED_UUID}",
            *extra,
            str(image),
            str(tree),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return image


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "root")


@pytest.fixture(scope="session")
def erofs_image(sample_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw EROFS image of ``sample_tree`` from real mkfs.erofs (about 200 KiB)."""
    return mkfs_erofs(sample_tree, tmp_path_factory.mktemp("img") / "sample.erofs")


@pytest.fixture(scope="session")
def erofs_bytes(erofs_image: Path) -> bytes:
    return erofs_image.read_bytes()


@pytest.fixture
def source_of() -> Iterator[Callable[[bytes], Source]]:
    """Make a ``Source`` reading given bytes from a real file descriptor (closed afterwards)."""
    files: list[IO[bytes]] = []

    def make(data: bytes) -> Source:
        f = tempfile.TemporaryFile()  # noqa: SIM115 - closed at teardown
        files.append(f)
        f.write(data)
        f.seek(0)
        return Source(f.fileno())

    yield make
    for f in files:
        f.close()
