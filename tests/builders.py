"""What tests build: packed blobs, tars and trees, OCI archives, patched images.

Shared by several test modules, so they live here and not in one test module
that the others would import from. Media types come from
``stream_processor.mediatypes``; a test never retypes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from stream_processor import PROG, seekable
from stream_processor import superblock as sb
from stream_processor.containerd import executable, platforms, render, routes, versions
from stream_processor.mediatypes import OCI_LAYER_TAR_ZSTD, Compression
from stream_processor.pack import PackResult, pack_image
from tests.conftest import ROOT
from tests.oci_builder import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST

# ---------------------------------------------------------------- seekable blobs

CHUNK = 16 * 1024  # the ~200 KiB sample image gives a dozen chunks


def pack_bytes(
    image: bytes,
    *,
    compression: Compression = Compression.ZSTD,
    chunk_size: int | None = CHUNK,
    threads: int = 1,
    level: int | None = None,
    dm_verity_block_size: int | None = None,
) -> tuple[bytes, PackResult]:
    out = io.BytesIO()
    result = pack_image(
        io.BytesIO(image),
        out,
        compression=compression,
        chunk_size=chunk_size,
        threads=threads,
        level=level,
        dm_verity_block_size=dm_verity_block_size,
    )
    return out.getvalue(), result


@dataclass
class Parts:
    """A packed blob taken apart: the chunk frames and the table payload."""

    frames: list[bytes]
    table: bytes

    @property
    def header(self) -> tuple[int, int, int, int, int, int]:
        fields: tuple[int, int, int, int, int, int] = seekable.HEADER.unpack_from(self.table)
        return fields


def split(blob: bytes) -> Parts:
    """Cut a blob from ``pack_image`` into frames and table (it is the last frame)."""
    offsets: list[int] = []
    at = 0
    while True:
        magic = int.from_bytes(blob[at : at + 4], "little")
        if magic == seekable.SKIPPABLE_TABLE_MAGIC:
            size = int.from_bytes(blob[at + 4 : at + 8], "little")
            table = blob[at + 8 : at + 8 + size]
            assert at + 8 + size == len(blob)
            break
        offsets.append(at)
        params = zstandard.get_frame_parameters(blob[at : at + 18])
        # frames from pack_image carry their content size: decompress to find the end
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(blob[at:])
        at = len(blob) - len(dobj.unused_data)
        assert params.content_size > 0
    ends = [*offsets[1:], at]
    return Parts([blob[s:e] for s, e in zip(offsets, ends, strict=True)], table)


def assemble(frames: list[bytes], table: bytes, *, before_table: bytes = b"") -> bytes:
    return b"".join(frames) + before_table + seekable.skippable_frame(table)


# ---------------------------------------------------------------- EROFS images


def patch_superblock(
    image: bytes, offset: int, fmt: str, value: int, fix_checksum: bool = True
) -> bytes:
    """``image`` with one superblock field set, its CRC32C resealed unless asked not to."""
    data = bytearray(image)
    struct.pack_into(fmt, data, sb.SUPERBLOCK_OFFSET + offset, value)
    if fix_checksum:
        parsed = sb.parse(data)
        start, end = parsed.checksum_region()
        region = bytearray(data[start:end])
        region[4:8] = b"\0\0\0\0"
        struct.pack_into("<I", data, sb.SUPERBLOCK_OFFSET + 4, sb.crc32c(region))
    return bytes(data)


# ---------------------------------------------------------------- trees and tars


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


TarEntry = tuple[str, bytes] | Callable[[tarfile.TarFile], None]


def tar_bytes(entries: list[TarEntry]) -> bytes:
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


def special_entry(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        if kind == tarfile.DIRTYPE:
            info.mode = 0o755
        tar.addfile(info)

    return add


HOSTILE_TARS: dict[str, tuple[list[TarEntry], str]] = {
    "absolute path": ([("/etc/evil", b"x")], "'/etc/evil' is an absolute path"),
    "dot-dot": ([("a/../../evil", b"x")], "'a/../../evil' climbs out of the layer"),
    "symlink escape": (
        [special_entry("link", tarfile.SYMTYPE, "/tmp"), ("link/evil", b"x")],
        "'link/evil' would be written through the symlink 'link'",
    ),
    "symlink escape, relative": (
        [special_entry("up", tarfile.SYMTYPE, "../.."), ("up/evil", b"x")],
        "'up/evil' would be written through the symlink 'up'",
    ),
    "hard link out of the layer": (
        [special_entry("h", tarfile.LNKTYPE, "../../etc/passwd")],
        "climbs out of the layer",
    ),
    "hard link to an absolute path": (
        [special_entry("h", tarfile.LNKTYPE, "/etc/passwd")],
        "is an absolute path",
    ),
    "hard link through a symlink": (
        [
            special_entry("s", tarfile.SYMTYPE, "/etc"),
            special_entry("h", tarfile.LNKTYPE, "s/passwd"),
        ],
        "'h' is a hard link to 's/passwd', which is not earlier in this layer",
    ),
    "duplicate file": ([("a", b"1"), ("a", b"2")], "'a' appears twice"),
    "duplicate directory": (
        [special_entry("d", tarfile.DIRTYPE), special_entry("d/", tarfile.DIRTYPE)],
        "'d/' appears twice",
    ),
    "whiteout and file": ([("x", b"1"), (".wh.x", b"")], "whites out 'x', which this layer"),
    "file under a file": ([("f", b"1"), ("f/g", b"2")], "needs 'f' to be a directory"),
}


def huge_tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 4096


# ---------------------------------------------------------------- OCI layouts read back

ORIGIN = ("trusted.overlay.origin", b"")


def without_origin(snap: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """Drop the empty ``trusted.overlay.origin`` that ``mkfs.erofs --aufs`` (1.8) puts on
    each directory holding a whiteout; overlayfs reads an empty one as "origin unknown"."""
    out = {}
    for rel, (mode, uid, gid, mtime, content, xattrs, link) in snap.items():
        if stat.S_ISDIR(mode):
            xattrs = tuple(x for x in xattrs if x != ORIGIN)
        out[rel] = (mode, uid, gid, mtime, content, xattrs, link)
    return out


def read_json(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def manifests(layout: Path) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(index entry, manifest, config) for every image manifest, nested indexes included."""
    out = []

    def walk(index: dict[str, Any]) -> None:
        for desc in index["manifests"]:
            doc = read_json(layout, desc["digest"])
            if "manifests" in doc:
                walk(doc)
            else:
                out.append((desc, doc, read_json(layout, doc["config"]["digest"])))

    walk(json.loads((layout / "index.json").read_bytes()))
    return out


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount EROFS here ({proc.stderr.strip()}); mount checks skipped")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


# ---------------------------------------------------------------- containerd inputs

TAR_FLAGS = ("tar", "--sort=name", "--mtime=@1700000000", "--numeric-owner")
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",  # no Kubernetes here; it would also write under /opt and /etc
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)


def write_wrapper(bin_dir: Path) -> Path:
    """An absolute-path executable that runs this checkout's processor (as an install would)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / PROG
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {sys.executable} -m stream_processor "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def tar_zstd_snippet(version: str, wrapper: Path, log_file: Path) -> str:
    """What ``config --containerd-version VERSION --routes tar+zstd`` prints, info logging."""
    profile = versions.profile_for(version)
    return render.render(
        render.SnippetOptions(
            profile=profile,
            executable=executable.Executable(str(wrapper)),
            routes=routes.resolve_routes(["tar+zstd"], profile),
            log_file=str(log_file),
            log_level="info",
            platform=platforms.host_platform(),
        )
    )


@dataclass(frozen=True)
class Archive:
    path: Path
    name: str
    diff_id: str
    tar: Path


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_oci_archive(
    tree: Path, work: Path, name: str, *, corrupt: bool = False, compressor: str = "zstd"
) -> Archive:
    """An OCI image layout (as a tar for ``ctr images import``) with one tar+zstd layer.

    The layer is GNU tar of ``tree`` compressed with the real ``zstd`` (or
    ``gzip`` to make the data disagree with the declared media type). With
    ``corrupt`` a byte in the middle of the compressed blob is flipped
    *before* digesting, so the blob digest is right and only the processor
    can notice.
    """
    work.mkdir(parents=True, exist_ok=True)
    layer_tar = work / "layer.tar"
    subprocess.run(
        [*TAR_FLAGS, "-C", str(tree), "-cf", str(layer_tar), "."],
        check=True,
    )
    tar_bytes = layer_tar.read_bytes()
    if compressor == "zstd":
        blob = subprocess.run(
            ["zstd", "-q", "-c"], input=tar_bytes, capture_output=True, check=True
        ).stdout
    else:
        blob = subprocess.run(
            ["gzip", "-n", "-c"], input=tar_bytes, capture_output=True, check=True
        ).stdout
    if corrupt:
        mutable = bytearray(blob)
        mutable[len(mutable) // 2] ^= 0xFF
        blob = bytes(mutable)
    diff_id = _digest(tar_bytes)
    os_name, arch = platforms.host_platform().split("/")
    config = json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER_TAR_ZSTD, "digest": _digest(blob), "size": len(blob)}
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": os_name},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    ).encode()
    out = work / "image.tar"
    with tarfile.open(out, "w") as archive:
        entries = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
        entries += [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in (config, manifest, blob)]
        for member, data in entries:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return Archive(out, name, diff_id, layer_tar)


def describe_tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content digest or link target), for comparing trees."""
    result: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", perm, "")
            else:
                result[rel] = ("file", perm, hashlib.sha256(full.read_bytes()).hexdigest())
    return result
