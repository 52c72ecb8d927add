"""Find ``mkfs.erofs`` and run it so that the same layer always gives the same bytes.

Two superblock fields of an image from erofs-utils are not a function of the
layer's contents, the UUID and the build time; ``finish_image`` sets both
afterwards and redoes the superblock checksum:

- the UUID as containerd's converter derives it from the layer's diff_id
  (``layer_uuid``); afterwards, because the streaming builder (``tarmode``)
  starts ``mkfs.erofs`` before the tar's digest is known;
- the build time, which ``-T`` cannot fix in 1.5 without overwriting every
  file's mtime; images are built with ``-Eforce-inode-extended``, so no inode
  borrows the superblock's time.

``build_from_directory`` is the one runner on a directory, for convert's
``dir`` builder and for ``pack DIR``. ``mkfs.erofs`` sorts directory entries
itself, so the order a directory lists them in does not matter.
"""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
import uuid
from pathlib import Path
from typing import NamedTuple

from stream_processor.errors import DataError, InputOutputError, UsageError
from stream_processor.superblock import SUPERBLOCK_OFFSET, crc32c, parse

BUILD_TIME_OFFSET = 0x18  # u64 seconds, then u32 nanoseconds (docs/superblock.md)
UUID_OFFSET = 0x30  # 16 bytes
CHECKSUM_OFFSET = 0x04
MKFS = "mkfs.erofs"
TAR_MODE_VERSION = (1, 8, 0)  # ``--tar`` (1.7) and ``--mkfs-time`` (1.8), see ``tarmode``
SORT_NONE_VERSION = (1, 8, 2)  # ``--sort=none``


def layer_uuid(diff_id: str) -> str:
    """containerd's UUID for the EROFS image of the tar layer with this diff_id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"erofs:blobs/{diff_id}"))


class Mkfs(NamedTuple):
    """One ``mkfs.erofs`` executable and the erofs-utils version it reports."""

    path: str
    version: tuple[int, int, int]  # major, minor, patch (0 when not printed)

    @property
    def streams_tar(self) -> bool:
        """Whether it can build straight from a tar stream (``--tar=f --aufs``)."""
        return self.version >= TAR_MODE_VERSION

    def describe(self) -> str:
        major, minor, patch = self.version
        text = f"{major}.{minor}.{patch}" if patch else f"{major}.{minor}"
        return f"{self.path} (erofs-utils {text})"


@functools.cache
def find_mkfs(name: str = MKFS) -> Mkfs:
    """The ``mkfs.erofs`` called ``name`` (a path, or looked up on PATH) and its version.

    1.5 prints its version on ``-V`` with status 1, newer ones with status 0.
    """
    path = shutil.which(name)
    if path is None:
        if name == MKFS:
            raise UsageError(f"{MKFS} is not installed (Debian: apt-get install erofs-utils)")
        raise UsageError(f"{name} is not an executable mkfs.erofs")
    proc = subprocess.run([path, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", proc.stdout + proc.stderr)
    if match is None:
        raise UsageError(f"cannot tell which version {path} is; is it mkfs.erofs?")
    major, minor, patch = (int(g) if g else 0 for g in match.groups())
    return Mkfs(path, (major, minor, patch))


def mkfs_failed(mkfs: Mkfs, returncode: int, output: str) -> InputOutputError:
    detail = " ".join(output.split())[-300:]
    return InputOutputError(f"{mkfs.path} failed (exit {returncode}): {detail}")


def build_from_directory(
    root: Path,
    image: Path,
    *,
    fs_uuid: str,
    build_time: int = 0,
    mkfs: Mkfs | None = None,
    stamp_files: bool = False,
) -> None:
    """``mkfs.erofs`` on ``root`` (owners, modes, mtimes, xattrs kept), then fix the time.

    The one place a directory becomes an image, for ``convert``'s ``dir``
    builder and for ``pack DIR``. ``stamp_files`` is ``mkfs.erofs -T``
    (``pack --timestamp``): every inode gets ``build_time`` as well.
    """
    mkfs = mkfs or find_mkfs()  # a clear message if erofs-utils is missing
    times = f"-T{build_time}" if stamp_files else "-Eforce-inode-extended"
    cmd = [mkfs.path, "--quiet", f"-U{fs_uuid}", times, str(image), str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise mkfs_failed(mkfs, proc.returncode, proc.stderr or proc.stdout)
    if not stamp_files:
        finish_image(image, build_time=build_time, fs_uuid=fs_uuid)


def finish_image(
    image: Path, *, build_time: int, nanoseconds: int = 0, fs_uuid: str | None = None
) -> None:
    """Set the superblock build time (and UUID) in place and recompute its checksum."""
    with image.open("r+b") as f:
        head = bytearray(f.read(SUPERBLOCK_OFFSET + 65536))
        try:
            sb = parse(head)
        except DataError as exc:
            raise InputOutputError(f"{MKFS} wrote an image that is not EROFS: {exc}") from None
        struct.pack_into(
            "<QI", head, SUPERBLOCK_OFFSET + BUILD_TIME_OFFSET, build_time, nanoseconds
        )
        if fs_uuid is not None:
            head[SUPERBLOCK_OFFSET + UUID_OFFSET : SUPERBLOCK_OFFSET + UUID_OFFSET + 16] = (
                uuid.UUID(fs_uuid).bytes
            )
        start, end = sb.checksum_region()
        if sb.has_checksum:
            struct.pack_into("<I", head, SUPERBLOCK_OFFSET + CHECKSUM_OFFSET, 0)
            struct.pack_into(
                "<I", head, SUPERBLOCK_OFFSET + CHECKSUM_OFFSET, crc32c(bytes(head[start:end]))
            )
        f.seek(0)
        f.write(head[: max(end, SUPERBLOCK_OFFSET + UUID_OFFSET + 16)])
