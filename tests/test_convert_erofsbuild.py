"""``convert.erofsbuild``: finding mkfs.erofs, building reproducibly, fixing the superblock.

Real ``mkfs.erofs`` throughout: Debian 12's 1.5 on PATH and, when fetched
(``make tools``), 1.8 in ``.tools/``; images are checked with ``fsck.erofs``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from stream_processor import superblock
from stream_processor.convert.erofsbuild import (
    MKFS,
    Mkfs,
    build_from_directory,
    find_mkfs,
    finish_image,
    layer_uuid,
    mkfs_failed,
)
from stream_processor.errors import InputOutputError, UsageError
from tests.conftest import require_tool, tar_mode_mkfs

UUID = "6b1f9c56-0f6a-4a43-9d5e-2c7e5b1a0d11"
DIGEST = "sha256:" + "ab" * 32


def head(image: Path) -> superblock.Superblock:
    return superblock.validate(image.read_bytes()[: superblock.SUPERBLOCK_OFFSET + 4096])


def fsck(image: Path) -> None:
    subprocess.run([require_tool("fsck.erofs"), str(image)], check=True, capture_output=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("content\n")
    (root / "link").symlink_to("d/f")
    os.utime(root / "d" / "f", (1_600_000_000, 1_600_000_000))
    return root


def test_layer_uuid_is_containerds() -> None:
    """containerd's converter: ``uuid5(NAMESPACE_URL, "erofs:blobs/<diff_id>")``."""
    assert layer_uuid(DIGEST) == str(uuid.uuid5(uuid.NAMESPACE_URL, f"erofs:blobs/{DIGEST}"))
    assert layer_uuid(DIGEST) != layer_uuid("sha256:" + "cd" * 32)


@pytest.mark.parametrize(
    ("version", "streams", "text"),
    [((1, 5, 0), False, "1.5"), ((1, 7, 1), False, "1.7.1"), ((1, 8, 6), True, "1.8.6")],
)
def test_mkfs_capabilities_and_description(
    version: tuple[int, int, int], streams: bool, text: str
) -> None:
    mkfs = Mkfs("/x/mkfs.erofs", version)
    assert mkfs.streams_tar is streams
    assert mkfs.describe() == f"/x/mkfs.erofs (erofs-utils {text})"


def test_find_mkfs_reads_the_version_of_old_and_new() -> None:
    old = find_mkfs(require_tool(MKFS))  # 1.5 prints it with exit status 1
    assert old.version >= (1, 5, 0) and old.path == shutil.which(MKFS)
    new = find_mkfs(tar_mode_mkfs())
    assert new.streams_tar


def test_find_mkfs_refuses_what_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unwrapped = find_mkfs.__wrapped__  # not the cache: PATH changes below
    with pytest.raises(UsageError, match=r"nope is not an executable mkfs\.erofs"):
        unwrapped(str(tmp_path / "nope"))
    impostor = tmp_path / "impostor"
    impostor.write_text("#!/bin/sh\necho hello\n")
    impostor.chmod(0o755)
    with pytest.raises(UsageError, match=r"cannot tell which version .*impostor is"):
        unwrapped(str(impostor))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError) as caught:
        unwrapped(MKFS)
    assert caught.value.message == (
        "mkfs.erofs is not installed (Debian: apt-get install erofs-utils)"
    )


def test_mkfs_failed_keeps_the_tail_on_one_line() -> None:
    output = "first line\n" + "x" * 400 + "\n  last words  \n"
    error = mkfs_failed(Mkfs("/bin/mkfs.erofs", (1, 8, 0)), 1, output)
    assert isinstance(error, InputOutputError)
    assert error.message.startswith("/bin/mkfs.erofs failed (exit 1): xxx")
    assert error.message.endswith("x last words") and "\n" not in error.message
    assert len(error.message) == len("/bin/mkfs.erofs failed (exit 1): ") + 300


def test_build_is_reproducible_with_time_and_uuid_fixed(tree: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.erofs", tmp_path / "b.erofs"
    build_from_directory(tree, a, fs_uuid=UUID, build_time=1234)
    build_from_directory(tree, b, fs_uuid=UUID, build_time=1234)
    assert a.read_bytes() == b.read_bytes()
    sb = head(a)
    assert (sb.build_time, sb.build_time_nsec, sb.uuid_str) == (1234, 0, UUID)
    fsck(a)


def test_stamp_files_is_mkfs_dash_t(tree: Path, tmp_path: Path) -> None:
    kept, stamped = tmp_path / "kept.erofs", tmp_path / "stamped.erofs"
    build_from_directory(tree, kept, fs_uuid=UUID, build_time=77)
    build_from_directory(tree, stamped, fs_uuid=UUID, build_time=77, stamp_files=True)
    assert head(stamped).build_time == 77 and head(stamped).uuid_str == UUID
    assert kept.read_bytes() != stamped.read_bytes()  # the files' own mtimes are gone
    fsck(stamped)


def test_finish_image_rewrites_only_time_uuid_and_checksum(tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "i.erofs"
    build_from_directory(tree, image, fs_uuid=UUID)
    before = image.read_bytes()
    other = "0e0d0c0b-0a09-4807-8605-040302010000"
    finish_image(image, build_time=99, nanoseconds=5, fs_uuid=other)
    after = image.read_bytes()
    changed = [
        i - superblock.SUPERBLOCK_OFFSET for i in range(len(before)) if before[i] != after[i]
    ]
    fields = set(range(0x04, 0x08)) | set(range(0x18, 0x24)) | set(range(0x30, 0x40))
    assert changed and set(changed) <= fields
    sb = head(image)
    assert (sb.build_time, sb.build_time_nsec, sb.uuid_str) == (99, 5, other)
    fsck(image)


def test_finish_image_refuses_what_is_not_erofs(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(bytes(8192))
    with pytest.raises(InputOutputError, match=r"mkfs\.erofs wrote an image that is not EROFS"):
        finish_image(junk, build_time=0)


def test_a_failing_mkfs_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InputOutputError, match=r"failed \(exit \d+\)"):
        build_from_directory(tmp_path / "missing", tmp_path / "i.erofs", fs_uuid=UUID)
