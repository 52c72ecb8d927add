"""Run ``mkfs.erofs`` so that the same layer always gives the same bytes.

Two things in an image built by erofs-utils 1.5 are not a function of the
directory tree: the filesystem UUID and the build time in the superblock.

- The UUID is passed with ``-U``, derived from the layer's uncompressed tar
  digest exactly as containerd's own converter does it
  (``uuid5(NAMESPACE_URL, "erofs:blobs/<digest>")``).
- The build time cannot be fixed with ``-T``: in 1.5, ``-T`` also overwrites
  every file's mtime, and an OCI layer must keep the mtimes from its tar.
  Instead the image is built with ``-Eforce-inode-extended`` (every inode
  then stores its own mtime; a compact inode would borrow the superblock's
  build time, which we are about to change) and the superblock's build time
  is set afterwards to a fixed value, with the superblock checksum redone.

``mkfs.erofs`` 1.5 sorts directory entries itself, so the order in which the
extraction directory lists them does not matter (checked in the tests).
"""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

from stream_processor.errors import DataError, InputOutputError, UsageError
from stream_processor.superblock import SUPERBLOCK_OFFSET, crc32c, parse

BUILD_TIME_OFFSET = 0x18  # u64 seconds, then u32 nanoseconds (REFERENCE.md section 3)
CHECKSUM_OFFSET = 0x04
MKFS = "mkfs.erofs"


def layer_uuid(diff_id: str) -> str:
    """containerd's UUID for the EROFS image of the tar layer with this diff_id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"erofs:blobs/{diff_id}"))


@functools.cache
def mkfs_version() -> tuple[int, int]:
    """(major, minor) of the installed ``mkfs.erofs``; 1.5 prints it on ``-V`` with status 1."""
    path = shutil.which(MKFS)
    if path is None:
        raise UsageError(f"{MKFS} is not installed (Debian: apt-get install erofs-utils)")
    proc = subprocess.run([path, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)\.(\d+)", proc.stdout + proc.stderr)
    if match is None:
        raise UsageError(f"cannot tell which version {path} is")
    return int(match.group(1)), int(match.group(2))


def build_from_directory(root: Path, image: Path, *, fs_uuid: str, build_time: int = 0) -> None:
    """``mkfs.erofs`` on ``root`` (owners, modes, mtimes, xattrs kept), then fix the time."""
    mkfs_version()  # a clear message if erofs-utils is missing
    cmd = [MKFS, "--quiet", "-Eforce-inode-extended", f"-U{fs_uuid}", str(image), str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise InputOutputError(f"{MKFS} failed (exit {proc.returncode}): {detail}")
    set_build_time(image, build_time)


def set_build_time(image: Path, seconds: int, nanoseconds: int = 0) -> None:
    """Overwrite the superblock build time in place and recompute its checksum."""
    with image.open("r+b") as f:
        head = bytearray(f.read(SUPERBLOCK_OFFSET + 65536))
        try:
            sb = parse(head)
        except DataError as exc:
            raise InputOutputError(f"{MKFS} wrote an image that is not EROFS: {exc}") from None
        struct.pack_into("<QI", head, SUPERBLOCK_OFFSET + BUILD_TIME_OFFSET, seconds, nanoseconds)
        start, end = sb.checksum_region()
        if sb.has_checksum:
            struct.pack_into("<I", head, SUPERBLOCK_OFFSET + CHECKSUM_OFFSET, 0)
            struct.pack_into(
                "<I", head, SUPERBLOCK_OFFSET + CHECKSUM_OFFSET, crc32c(bytes(head[start:end]))
            )
        f.seek(0)
        f.write(head[: max(end, SUPERBLOCK_OFFSET + 0x24)])
