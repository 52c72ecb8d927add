"""Unpacking one tar layer with overlay semantics, and refusing hostile tars.

Layers here are real tars: made with ``tarfile`` from real directories
(``oci_builder.tar_tree``) or, for hostile ones, written entry by entry.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_processor.convert.erofsbuild import build_from_directory, finish_image, layer_uuid
from stream_processor.convert.tarlayer import clean_name, extract_layer
from stream_processor.errors import DataError
from tests.oci_builder import expected_layer, snapshot, tar_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers keeps owners: root")


def rich_tree(root: Path) -> Path:
    """Every kind of entry a layer can hold, with the metadata that must survive."""
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    tool = root / "usr" / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n" * 100)
    os.chown(tool, 0, 0)
    tool.chmod(0o4755)  # setuid
    os.link(tool, root / "usr" / "bin" / "tool-link")
    (root / "usr" / "bin" / "sym").symlink_to("tool")
    (root / "etc" / "abs-link").symlink_to("/etc/passwd")  # absolute targets are fine
    shared = root / "shared"
    shared.mkdir()
    shared.chmod(0o3777)  # setgid + sticky
    owned = root / "etc" / "owned"
    owned.write_text("owned by 1000:2000\n")
    os.chown(owned, 1000, 2000)
    owned.chmod(0o2640)
    os.setxattr(owned, "user.comment", b"hello \xff binary")
    os.setxattr(root / "usr", "trusted.demo", b"t")
    os.mknod(root / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "etc" / "sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.mkfifo(root / "etc" / "fifo", 0o644)
    (root / "empty").write_bytes(b"")
    gone = root / "var" / "lib"
    gone.mkdir(parents=True)
    (gone / ".wh.deleted").write_bytes(b"")
    (root / "var" / "cache").mkdir()
    (root / "var" / "cache" / ".wh..wh..opq").write_bytes(b"")
    (root / "var" / "cache" / "new").write_text("new\n")
    for i, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i), follow_symlinks=False)
    return root


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
    data = _tar([("a/b/c/file", b"x")])
    unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "c" / "file").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "a").st_mode) == 0o755


@pytest.mark.parametrize(
    ("name", "expected"),
    [("./a//b/", "a/b"), (".", ""), ("./", ""), ("a/./b", "a/b")],
)
def test_clean_name(name: str, expected: str) -> None:
    assert clean_name(name) == expected


Entry = tuple[str, bytes] | Callable[[tarfile.TarFile], None]


def _tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if callable(entry):
                entry(tar)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        if kind == tarfile.DIRTYPE:
            info.mode = 0o755
        tar.addfile(info)

    return add


HOSTILE: dict[str, tuple[list[Entry], str]] = {
    "absolute path": ([("/etc/evil", b"x")], "'/etc/evil' is an absolute path"),
    "dot-dot": ([("a/../../evil", b"x")], "'a/../../evil' climbs out of the layer"),
    "symlink escape": (
        [_special("link", tarfile.SYMTYPE, "/tmp"), ("link/evil", b"x")],
        "'link/evil' would be written through the symlink 'link'",
    ),
    "symlink escape, relative": (
        [_special("up", tarfile.SYMTYPE, "../.."), ("up/evil", b"x")],
        "'up/evil' would be written through the symlink 'up'",
    ),
    "hard link out of the layer": (
        [_special("h", tarfile.LNKTYPE, "../../etc/passwd")],
        "climbs out of the layer",
    ),
    "hard link to an absolute path": (
        [_special("h", tarfile.LNKTYPE, "/etc/passwd")],
        "is an absolute path",
    ),
    "hard link through a symlink": (
        [_special("s", tarfile.SYMTYPE, "/etc"), _special("h", tarfile.LNKTYPE, "s/passwd")],
        "'h' is a hard link to 's/passwd', which is not earlier in this layer",
    ),
    "duplicate file": ([("a", b"1"), ("a", b"2")], "'a' appears twice"),
    "duplicate directory": (
        [_special("d", tarfile.DIRTYPE), _special("d/", tarfile.DIRTYPE)],
        "'d/' appears twice",
    ),
    "whiteout and file": ([("x", b"1"), (".wh.x", b"")], "whites out 'x', which this layer"),
    "file under a file": ([("f", b"1"), ("f/g", b"2")], "needs 'f' to be a directory"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_is_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "work" / "root"
    root.parent.mkdir()
    with pytest.raises(DataError, match=_re(message)):
        unpack(_tar(entries), root)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert {p.parent for p in tmp_path.rglob("*")} <= {tmp_path, root.parent, root, outside}


def _re(text: str) -> str:
    import re

    return re.escape(text)


def _huge_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 4096


def test_huge_declared_size_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'big' declares 1099511627776 bytes, more than the"):
        unpack(_huge_header("big", 1 << 40), tmp_path / "out")
    assert not (tmp_path / "out" / "big").exists()


def test_layer_budget_counts_all_files(tmp_path: Path) -> None:
    data = _tar([("a", b"x" * 600), ("b", b"y" * 600)])
    with pytest.raises(DataError, match="'b' declares 600 bytes, more than the layer limit"):
        unpack(data, tmp_path / "out", max_bytes=1000)


def test_truncated_entry_names_the_entry(tmp_path: Path) -> None:
    data = _tar([("file", b"z" * 100_000)])[:20_000]
    with pytest.raises(DataError, match="'file'"):
        unpack(data, tmp_path / "out")


def test_not_a_tar(tmp_path: Path) -> None:
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
