"""Build real OCI image layouts from directory trees, and compare trees, for the convert tests.

Layers are tars of real directories (as BuildKit writes them: sorted, PAX,
xattrs as ``SCHILY.xattr.*``, hard links as link entries, OCI whiteouts as
empty ``.wh.NAME`` files). ``merge_layers`` is an independent reference
for what a stack of such layers means, written with plain file operations
and no overlayfs, so the converted, mounted stack can be compared with it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from stream_processor.convert import oci
from stream_processor.convert.namespace import WHITEOUT_OPAQUE, WHITEOUT_PREFIX
from stream_processor.convert.oci import DOCKER_CONFIG, DOCKER_MANIFEST
from stream_processor.mediatypes import (
    DOCKER_LAYER_TAR_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_TAR_GZIP,
    OCI_LAYER_TAR_ZSTD,
)

# Named here too: other test modules and the benchmarks import them from this module.
OCI_INDEX, OCI_MANIFEST, OCI_CONFIG = oci.OCI_INDEX, oci.OCI_MANIFEST, oci.OCI_CONFIG
LAYER_TYPES = {
    "none": OCI_LAYER_TAR,
    "gzip": OCI_LAYER_TAR_GZIP,
    "zstd": OCI_LAYER_TAR_ZSTD,
    "docker-gzip": DOCKER_LAYER_TAR_GZIP,
}
WH = WHITEOUT_PREFIX
OPQ = WHITEOUT_OPAQUE


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_tree(tree: Path) -> bytes:
    """A layer tar of ``tree`` (its root itself is not an entry, as in BuildKit layers)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            base = Path(dirpath)
            if base != tree:
                paths.append(base)
            paths += [base / n for n in sorted(filenames)]
            # os.walk lists symlinks to directories under dirnames: keep them as entries
            paths += [base / n for n in dirnames if (base / n).is_symlink()]
        for path in paths:
            arcname = path.relative_to(tree).as_posix()
            info = tar.gettarinfo(str(path), arcname)
            info.mtime = int(os.lstat(path).st_mtime)
            info.uname = info.gname = ""
            pax: dict[str, str] = {}
            for name in os.listxattr(path, follow_symlinks=False):
                value = os.getxattr(path, name, follow_symlinks=False)
                pax[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
            info.pax_headers = pax
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how in ("gzip", "docker-gzip"):
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Image:
    """One platform's image: layer tars plus what its config says."""

    tars: list[bytes]
    compression: str = "gzip"
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None
    docker: bool = False
    layer_blobs: list[tuple[str, bytes]] | None = None  # (media type, blob) to use as they are


class LayoutBuilder:
    """Writes blobs, configs, manifests and the index of an OCI layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return digest, len(data)

    def json_blob(self, doc: dict[str, Any], media_type: str) -> dict[str, Any]:
        digest, size = self.blob(json.dumps(doc, indent=1).encode())
        return {"mediaType": media_type, "digest": digest, "size": size}

    def image(self, image: Image) -> dict[str, Any]:
        layers = []
        diff_ids = []
        if image.layer_blobs is not None:
            for media_type, data in image.layer_blobs:
                digest, size = self.blob(data)
                layers.append({"mediaType": media_type, "digest": digest, "size": size})
            diff_ids = [sha256(t) for t in image.tars]
        else:
            kind = "docker-gzip" if image.docker else image.compression
            for tar in image.tars:
                digest, size = self.blob(compress(tar, kind))
                layers.append({"mediaType": LAYER_TYPES[kind], "digest": digest, "size": size})
                diff_ids.append(sha256(tar))
        config: dict[str, Any] = {
            "architecture": image.architecture,
            "os": image.os,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))],
        }
        if image.variant:
            config["variant"] = image.variant
        config_desc = self.json_blob(config, DOCKER_CONFIG if image.docker else OCI_CONFIG)
        manifest_type = DOCKER_MANIFEST if image.docker else OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_desc,
            "layers": layers,
        }
        desc = self.json_blob(manifest, manifest_type)
        platform: dict[str, Any] = {"architecture": image.architecture, "os": image.os}
        if image.variant:
            platform["variant"] = image.variant
        desc["platform"] = platform
        return desc

    def finish(self, manifests: Sequence[dict[str, Any]], ref: str = "test:latest") -> Path:
        entries = []
        for desc in manifests:
            entry = dict(desc)
            entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
            entries.append(entry)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        (self.root / "index.json").write_text(json.dumps(index))
        return self.root


def build_layout(root: Path, images: Iterable[Image], ref: str = "test:latest") -> Path:
    builder = LayoutBuilder(root)
    return builder.finish([builder.image(img) for img in images], ref)


def archive_layout(layout: Path, archive: Path) -> Path:
    """An ``oci-archive`` tar of ``layout`` (what skopeo's oci-archive: writes)."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(str(path), path.relative_to(layout).as_posix(), recursive=False)
    return archive


# ---------------------------------------------------------------- trees


def snapshot(root: Path, *, strict: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything overlay semantics care about, per path (the root itself excluded).

    ``strict=False`` leaves out hard-link identity and directory mtimes, which a
    merged tree built by copying (``merge_layers``) cannot reproduce.
    """
    out: dict[str, tuple[Any, ...]] = {}
    first_of_inode: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                # overlayfs lists a whiteout that sits in an unmerged lowest-layer
                # directory, but looking it up says it is not there: it is not.
                continue
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in os.listxattr(path, follow_symlinks=False)
                )
            )
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            link = None
            if strict and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                link = first_of_inode.setdefault(st.st_ino, rel)
            mtime = None if stat.S_ISDIR(st.st_mode) and not strict else int(st.st_mtime)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, content, xattrs, link)
    return out


def expected_layer(source: Path, dest: Path) -> Path:
    """One layer as overlayfs wants it unpacked: a reference, not the code under test."""
    subprocess.run(["cp", "-a", f"{source}/.", str(dest)], check=True)
    for dirpath, _dirnames, filenames in os.walk(dest):
        for name in filenames:
            path = Path(dirpath) / name
            if name == OPQ:
                st = os.lstat(Path(dirpath))
                path.unlink()
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
                os.utime(dirpath, ns=(st.st_atime_ns, st.st_mtime_ns))
            elif name.startswith(WH):
                st = os.lstat(path)
                dir_st = os.lstat(Path(dirpath))
                path.unlink()
                target = Path(dirpath) / name[len(WH) :]
                os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))
                os.chown(target, st.st_uid, st.st_gid)
                os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns))
                os.utime(dirpath, ns=(dir_st.st_atime_ns, dir_st.st_mtime_ns))
    return dest


def merge_layers(sources: Sequence[Path], dest: Path) -> Path:
    """The merged rootfs of a layer stack, applying OCI whiteouts by hand."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in sources:
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            rel = Path(dirpath).relative_to(source)
            target_dir = dest / rel
            if OPQ in filenames:
                for child in list(target_dir.iterdir()):
                    _remove(child)
            for name in sorted(filenames) + [
                d for d in dirnames if (Path(dirpath) / d).is_symlink()
            ]:
                if name == OPQ:
                    continue
                if name.startswith(WH):
                    _remove(target_dir / name[len(WH) :])
                    continue
                _remove(target_dir / name)
                subprocess.run(
                    [
                        "cp",
                        "-a",
                        "--no-dereference",
                        str(Path(dirpath) / name),
                        str(target_dir / name),
                    ],
                    check=True,
                )
            for name in dirnames:
                src_dir = Path(dirpath) / name
                if src_dir.is_symlink():
                    continue
                out = target_dir / name
                if out.exists() and not out.is_dir():
                    _remove(out)
                if not out.exists():
                    out.mkdir()
                for xattr in os.listxattr(out):  # the topmost layer's directory wins whole
                    os.removexattr(out, xattr)
                shutil.copystat(src_dir, out, follow_symlinks=False)
                st = os.lstat(src_dir)
                os.chown(out, st.st_uid, st.st_gid)
    return dest


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# ---------------------------------------------------------------- a runnable image

# What runs in the container made from ``runnable_trees``: dash builtins only
# (no other binary is in the image), one line per check, and a non-zero exit
# if any check fails, so ``ctr run``'s output and status say what the stacked
# layers look like through the kernel's overlay of EROFS mounts.
RUN_CHECKS = (
    'read a < /etc/layer1; read b < /etc/layer2; read c < /etc/layer3; echo "layers: $a $b $c"; '
    'if [ -e /opt/gone ]; then echo "whiteout: no"; exit 1; else echo "whiteout: yes"; fi; '
    "if [ -e /data/old ] || [ ! -e /data/new ]; then echo 'opaque: no'; exit 1; "
    "else echo 'opaque: yes'; fi; "
    "if [ -u /usr/bin/suid ] && [ -x /usr/bin/suid ]; then echo 'setuid: yes'; "
    "else echo 'setuid: no'; exit 1; fi"
)
RUN_EXPECTED = "layers: one two three\nwhiteout: yes\nopaque: yes\nsetuid: yes\n"


def _put(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def runnable_trees(root: Path, bulk: Path | None = None) -> list[Path]:
    """Three layer trees that make a runnable image: this host's ``/bin/dash`` and the
    libraries ``ldd`` names, then a whiteout, an opaque directory and a setuid file.

    ``bulk`` (a directory, e.g. ``/usr/share/zoneinfo``) is copied into the top
    layer under ``/bulk`` to give it some weight.
    """
    base, middle, top = root / "l1", root / "l2", root / "l3"
    libs = subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=True)
    for line in libs.stdout.splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if lib.startswith("/"):
            target = base / lib.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.realpath(lib), target)
            target.chmod(0o755)
    (base / "bin").mkdir(parents=True)
    shutil.copyfile("/bin/dash", base / "bin" / "sh")
    (base / "bin" / "sh").chmod(0o755)
    _put(base / "etc" / "layer1", "one\n")
    _put(base / "opt" / "gone", "removed by a whiteout in the next layer\n")
    _put(base / "data" / "old", "hidden by the next layer's opaque directory\n")
    _put(base / "usr" / "bin" / "suid", "#!/bin/sh\n", 0o4755)
    _put(middle / "etc" / "layer2", "two\n")
    _put(middle / "opt" / f"{WH}gone", "")
    _put(middle / "data" / OPQ, "")
    _put(middle / "data" / "new", "new\n")
    _put(top / "etc" / "layer3", "three\n")
    if bulk is not None:
        shutil.copytree(bulk, top / "bulk", symlinks=True)
    return [base, middle, top]
