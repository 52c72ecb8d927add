"""The ``tar`` builder: a tar layer streamed into real ``mkfs.erofs --tar=f --aufs`` (1.8).

The same hostile tars as the unpacking builder (``test_convert_tarlayer``)
must be refused with the same messages, and the image must be the same
function of the tar: reproducible, with containerd's UUID, whatever time it
is built at. ``mkfs.erofs`` comes from ``tar_mode_mkfs`` (Debian trixie's
erofs-utils, fetched by ``.ci/fetch-erofs-utils``).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from stream_processor.convert.erofsbuild import Mkfs, find_mkfs, finish_image, layer_uuid
from stream_processor.convert.namespace import ExtractStats
from stream_processor.convert.tarlayer import extract_layer
from stream_processor.convert.tarmode import build_from_tar
from stream_processor.errors import DataError
from tests.builders import (
    HOSTILE_TARS,
    huge_tar_header,
    mounted,
    rich_tree,
    tar_bytes,
    without_origin,
)
from tests.conftest import ROOT, tar_mode_mkfs
from tests.oci_builder import Image, build_layout, expected_layer, snapshot, tar_tree
from tests.processor import run_cli

UUID = layer_uuid("sha256:" + "0" * 64)


@pytest.fixture(scope="module")
def mkfs() -> Mkfs:
    return find_mkfs(tar_mode_mkfs())


def build(
    mkfs: Mkfs, data: bytes, image: Path, *, uuid: str = UUID, max_bytes: int = 1 << 40
) -> ExtractStats:
    return build_from_tar(io.BytesIO(data), image, mkfs=mkfs, fs_uuid=uuid, max_bytes=max_bytes)


@pytest.mark.skipif(os.geteuid() != 0, reason="the rich tree has owners and devices: root")
def test_streamed_layer_mounts_with_overlay_semantics(mkfs: Mkfs, tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    image = tmp_path / "layer.erofs"
    stats = build(mkfs, tar_tree(tree), image)
    (tmp_path / "unpacked").mkdir()
    assert stats == extract_layer(io.BytesIO(tar_tree(tree)), tmp_path / "unpacked")
    assert (stats.whiteouts, stats.opaque_dirs, stats.hardlinks) == (1, 1, 1)
    fsck = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with mounted(image, tmp_path / "mnt") as mnt:
        assert without_origin(snapshot(mnt)) == snapshot(expected_layer(tree, tmp_path / "want"))
        assert os.getxattr(mnt / "var" / "cache", "trusted.overlay.opaque") == b"y"
        whiteout = os.lstat(mnt / "var" / "lib" / "deleted")
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0


def test_same_tar_same_image_at_any_time(mkfs: Mkfs, tmp_path: Path) -> None:
    """No root entry and an implied parent: both would carry the build time without -T."""
    data = tar_bytes([("a/b/file", b"x" * 5000), ("a/b/other", b"y")])
    build(mkfs, data, tmp_path / "one")
    time.sleep(1.1)
    build(mkfs, data, tmp_path / "two")
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


def test_uuid_fixed_afterwards_equals_uuid_given_to_mkfs(mkfs: Mkfs, tmp_path: Path) -> None:
    """The tar builder may learn the layer's digest only after mkfs.erofs has run."""
    data = tar_bytes([("etc/hosts", b"127.0.0.1 localhost\n"), ("bin/sh", b"\x7fELF" * 900)])
    other = layer_uuid("sha256:" + "1" * 64)
    build(mkfs, data, tmp_path / "direct", uuid=other)
    build(mkfs, data, tmp_path / "fixed", uuid=UUID)
    finish_image(tmp_path / "fixed", build_time=0, fs_uuid=other)
    assert (tmp_path / "fixed").read_bytes() == (tmp_path / "direct").read_bytes()


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused_and_nothing_escapes(mkfs: Mkfs, tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE_TARS[case]
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataError, match=re.escape(message)):
        build(mkfs, tar_bytes(entries), work / "layer.erofs")
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert {p.parent for p in tmp_path.rglob("*")} <= {tmp_path, work}


def test_huge_declared_size_is_refused_before_mkfs_reads_it(mkfs: Mkfs, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'big' declares 1099511627776 bytes, more than the"):
        build(mkfs, huge_tar_header("big", 1 << 40), tmp_path / "img", max_bytes=64 << 30)


def test_layer_budget_counts_all_files(mkfs: Mkfs, tmp_path: Path) -> None:
    data = tar_bytes([("a", b"x" * 600), ("b", b"y" * 600)])
    with pytest.raises(DataError, match="'b' declares 600 bytes, more than the layer limit"):
        build(mkfs, data, tmp_path / "img", max_bytes=1000)


def test_truncated_tar_names_the_entry(mkfs: Mkfs, tmp_path: Path) -> None:
    data = tar_bytes([("file", b"z" * 100_000)])[:20_000]
    with pytest.raises(DataError, match="'file'"):
        build(mkfs, data, tmp_path / "img")


def test_not_a_tar(mkfs: Mkfs, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a tar archive"):
        build(mkfs, b"this is not a tar archive at all" * 40, tmp_path / "img")


# ---------------------------------------------------------------- through the CLI


def _layout(tmp_path: Path) -> Path:
    data = tar_bytes([("usr/bin/tool", b"#!/bin/sh\n" * 300), ("etc/.wh.gone", b"")])
    return build_layout(tmp_path / "src", [Image([data], "gzip")])


def test_auto_picks_the_tar_builder_for_a_new_mkfs(tmp_path: Path) -> None:
    import json

    src = _layout(tmp_path)
    proc = run_cli(
        ["convert", str(src), str(tmp_path / "out"), "--json", "--quiet"],
        env={"EROFS_SP_MKFS": tar_mode_mkfs()},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["builder"] == "tar" and report["layers"][0]["builder"] == "tar"
    assert "erofs-utils 1.8" in report["mkfs"] or "erofs-utils 1.9" in report["mkfs"]


NO_CAPS = ["setpriv", "--bounding-set=-all", "--"]  # uid 0, but no capability at all


def _convert_as(
    prefix: list[str], src: Path, dst: Path, *flags: str
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "stream_processor", "convert", str(src), str(dst), "--quiet"]
    return subprocess.run([*prefix, *cmd, *flags], capture_output=True, cwd=ROOT, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities with setpriv needs root")
def test_tar_builder_needs_no_privileges(tmp_path: Path) -> None:
    """With every capability dropped: no chown, mknod or trusted.* xattrs are needed.

    The dir builder, which must mknod the device node, says what to do instead.
    """
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")

    def device(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("dev/null")
        info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, 1, 3, 0o666
        tar.addfile(info)

    tree_tar = tar_bytes([("usr/bin/tool", b"x" * 3000), ("etc/.wh.gone", b""), device])
    src = build_layout(tmp_path / "src", [Image([tree_tar], "zstd")])
    tar_flags = ("--builder", "tar", "--mkfs", tar_mode_mkfs())
    out = {}
    for name, prefix in (("root", []), ("nocaps", NO_CAPS)):
        proc = _convert_as(prefix, src, tmp_path / name, *tar_flags)
        assert proc.returncode == 0, proc.stderr.decode()
        out[name] = (tmp_path / name / "index.json").read_bytes()
    assert out["nocaps"] == out["root"]
    proc = _convert_as(NO_CAPS, src, tmp_path / "dir", "--builder", "dir", "--mkfs", "mkfs.erofs")
    assert proc.returncode == 74 and proc.stdout == b""
    [line] = proc.stderr.decode().splitlines()
    assert "'dev/null': operation not permitted" in line and "--builder tar" in line
    assert not (tmp_path / "dir").exists()


def test_tar_builder_with_an_old_mkfs_is_a_usage_error(tmp_path: Path) -> None:
    if find_mkfs().streams_tar:
        pytest.skip("the mkfs.erofs on PATH is new enough to stream tars")
    proc = run_cli(["convert", str(_layout(tmp_path)), str(tmp_path / "out"), "--builder", "tar"])
    assert proc.returncode == 2 and proc.stdout == b""
    [line] = proc.stderr.decode().splitlines()
    assert "--builder tar needs erofs-utils 1.8 or newer" in line and "erofs-utils 1.5" in line
    assert not (tmp_path / "out").exists()


def test_missing_mkfs_is_named(tmp_path: Path) -> None:
    proc = run_cli(
        ["convert", str(_layout(tmp_path)), str(tmp_path / "out"), "--mkfs", "/nope/mkfs.erofs"]
    )
    assert proc.returncode == 2 and proc.stdout == b""
    [line] = proc.stderr.decode().splitlines()
    assert "/nope/mkfs.erofs is not an executable mkfs.erofs" in line


@pytest.mark.parametrize(
    ("version", "sort"),
    [((1, 8, 0), False), ((1, 8, 1), False), ((1, 8, 2), True), ((1, 9, 0), True)],
)
def test_sort_none_only_where_mkfs_knows_it(version: tuple[int, int, int], sort: bool) -> None:
    """``--sort=none`` arrived in erofs-utils 1.8.2; 1.8.0 and 1.8.1 would refuse it."""
    from stream_processor.convert.tarmode import mkfs_tar_command

    cmd = mkfs_tar_command(Mkfs("/x/mkfs.erofs", version), Path("/x/img"), UUID, 0)
    assert ("--sort=none" in cmd) is sort
    assert cmd[:5] == ["/x/mkfs.erofs", "--tar=f", "--aufs", "--quiet", "-Enoinline_data"]
    assert cmd[-4:] == ["-T0", "--mkfs-time", f"-U{UUID}", "/x/img"]
