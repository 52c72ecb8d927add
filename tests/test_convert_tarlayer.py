"""Unpacking one tar layer with overlay semantics, and refusing hostile tars.

Layers here are real tars: made with ``tarfile`` from real directories
(``oci_builder.tar_tree``) or, for hostile ones, written entry by entry.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

import pytest

from stream_processor.convert.erofsbuild import build_from_directory, finish_image, layer_uuid
from stream_processor.convert.tarlayer import clean_name, extract_layer
from stream_processor.errors import DataError
from tests.builders import HOSTILE_TARS, huge_tar_header, rich_tree, tar_bytes
from tests.oci_builder import expected_layer, snapshot, tar_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers keeps owners: root")


def unpack(data: bytes, root: Path, max_bytes: int = 1 << 40) -> None:
    root.mkdir(exist_ok=True)
    extract_layer(io.BytesIO(data), root, max_bytes=max_bytes)


def test_layer_unpacks_with_overlay_semantics(tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    unpack(tar_tree(tree), tmp_path / "out")
    want = snapshot(expected_layer(tree, tmp_path / "want"))
    got = snapshot(tmp_path / "out")
    assert got == want
    assert stat.S_IMODE(os.lstat(tmp_path / "out" / "usr" / "bin" / "tool").st_mode) == 0o4755
    assert os.getxattr(tmp_path / "out" / "var" / "cache", "trusted.overlay.opaque") == b"y"
    whiteout = os.lstat(tmp_path / "out" / "var" / "lib" / "deleted")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert not (tmp_path / "out" / "var" / "lib" / ".wh.deleted").exists()
    assert not (tmp_path / "out" / "var" / "cache" / ".wh..wh..opq").exists()


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    data = tar_bytes([("a/b/c/file", b"x")])
    unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "c" / "file").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "a").st_mode) == 0o755


@pytest.mark.parametrize(
    ("name", "expected"),
    [("./a//b/", "a/b"), (".", ""), ("./", ""), ("a/./b", "a/b")],
)
def test_clean_name(name: str, expected: str) -> None:
    assert clean_name(name) == expected


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE_TARS[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "work" / "root"
    root.parent.mkdir()
    with pytest.raises(DataError, match=re.escape(message)):
        unpack(tar_bytes(entries), root)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert {p.parent for p in tmp_path.rglob("*")} <= {tmp_path, root.parent, root, outside}


def test_huge_declared_size_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'big' declares 1099511627776 bytes, more than the"):
        unpack(huge_tar_header("big", 1 << 40), tmp_path / "out")
    assert not (tmp_path / "out" / "big").exists()


def test_layer_budget_counts_all_files(tmp_path: Path) -> None:
    data = tar_bytes([("a", b"x" * 600), ("b", b"y" * 600)])
    with pytest.raises(DataError, match="'b' declares 600 bytes, more than the layer limit"):
        unpack(data, tmp_path / "out", max_bytes=1000)


def test_truncated_entry_names_the_entry(tmp_path: Path) -> None:
    data = tar_bytes([("file", b"z" * 100_000)])[:20_000]
    with pytest.raises(DataError, match="'file'"):
        unpack(data, tmp_path / "out")


def test_not_atar_bytes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a tar archive"):
        unpack(b"this is not a tar archive at all" * 40, tmp_path / "out")


def test_unpacked_layer_builds_the_same_image_twice(tmp_path: Path) -> None:
    """Same tar -> same bytes: fixed UUID, fixed build time, mkfs sorts entries itself."""
    tree = rich_tree(tmp_path / "tree")
    data = tar_tree(tree)
    images = []
    for i in range(2):
        root = tmp_path / f"root{i}"
        unpack(data, root)
        image = tmp_path / f"img{i}"
        build_from_directory(root, image, fs_uuid=layer_uuid("sha256:" + "0" * 64))
        images.append(image.read_bytes())
    assert images[0] == images[1]


def test_layer_uuid_is_containerds() -> None:
    import uuid

    digest = "sha256:" + "ab" * 32
    assert layer_uuid(digest) == str(uuid.uuid5(uuid.NAMESPACE_URL, f"erofs:blobs/{digest}"))


def test_finish_image_keeps_a_valid_checksum(tmp_path: Path, erofs_image: Path) -> None:
    from stream_processor.superblock import validate

    image = tmp_path / "img"
    image.write_bytes(erofs_image.read_bytes())
    finish_image(image, build_time=1234, nanoseconds=5)
    sb = validate(image.read_bytes()[:8192])
    assert (sb.build_time, sb.build_time_nsec) == (1234, 5)
