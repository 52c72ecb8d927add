"""OCI image layouts: read one (a directory or an ``oci-archive`` tar), write one.

What ``skopeo copy ... oci:DIR`` / ``oci-archive:FILE`` and ``ctr images
export`` produce: ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``.
An archive is read in place (tar members are located once and read by
offset), so a large image is not copied before conversion.

Every blob read is checked against its descriptor's digest and size as it is
read; JSON documents (indexes, manifests, configs) are size-limited before
they are parsed, since they come from the image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

from stream_processor.errors import DataError, InputOutputError, UsageError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
MAX_JSON_BYTES = 4 << 20
READ_SIZE = 1 << 20

Json = dict[str, Any]

# What ``uname -m`` and some images say, to the GOARCH names OCI platforms use.
ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
}


def normalize_arch(arch: str) -> str:
    """The OCI (GOARCH) name of an architecture: ``x86_64`` -> ``amd64``."""
    return ARCH_ALIASES.get(arch, arch)


class Platform(NamedTuple):
    """A wanted platform, ``os/arch[/variant]`` (``--platform``)."""

    os: str
    arch: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, the architecture normalized; ``UsageError`` otherwise."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
        return cls(parts[0], normalize_arch(parts[1]), parts[2] if len(parts) == 3 else None)

    def matches(self, platform: Json) -> bool:
        """Whether an image's ``platform`` object is this one (any variant if none is given)."""
        arch = normalize_arch(str(platform.get("architecture")))
        same_variant = self.variant is None or platform.get("variant") == self.variant
        return platform.get("os") == self.os and arch == self.arch and same_variant


def platform_matches(platform: Json, wanted: Iterable[Platform]) -> bool:
    """Whether ``platform`` is one of ``wanted``; every platform is when none is."""
    wanted = tuple(wanted)
    return not wanted or any(w.matches(platform) for w in wanted)


def platform_text(platform: Json) -> str:
    """``os/arch[/variant]`` of an image's ``platform`` object, ``?`` for what it lacks."""
    parts = [str(platform.get("os", "?")), str(platform.get("architecture", "?"))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def canonical_json(doc: Json) -> bytes:
    """Compact, key order as built: the same document always gives the same digest."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_rel(digest: str) -> str:
    alg, sep, hexpart = digest.partition(":")
    if (
        not sep
        or alg != "sha256"
        or len(hexpart) != 64
        or not all(c in "0123456789abcdef" for c in hexpart)
    ):
        raise DataError(f"unsupported or malformed digest {digest!r} (expected sha256:<64 hex>)")
    return f"blobs/{alg}/{hexpart}"


class VerifiedReader(io.RawIOBase):
    """Reads a blob and, at its end, checks the size and SHA-256 its descriptor promised."""

    def __init__(self, raw: BinaryIO, digest: str, size: int, what: str) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._size = size
        self._what = what
        self._sha = hashlib.sha256()
        self._seen = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            n = self._raw.readinto(view) if hasattr(self._raw, "readinto") else 0
        except OSError as exc:
            raise InputOutputError.from_os_error(f"cannot read {self._what}", exc) from exc
        if n:
            self._sha.update(view[:n])
            self._seen += n
            if self._seen > self._size:
                raise DataError(
                    f"{self._what} is larger than the {self._size} bytes its descriptor says"
                )
        else:
            self._check()
        return n

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        if self._seen != self._size:
            raise DataError(
                f"{self._what} has {self._seen} bytes, its descriptor says {self._size}"
            )
        actual = "sha256:" + self._sha.hexdigest()
        if actual != self._digest:
            raise DataError(f"{self._what} is corrupt: its content hashes to {actual}")

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class _Window(io.RawIOBase):
    """``size`` bytes of a file starting at ``offset``: one member of an archive."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        super().__init__()
        self._f = path.open("rb", buffering=0)
        self._f.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")[: self._left]
        n = self._f.readinto(view) or 0
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class BlobStore(Protocol):
    """Where the blobs of a layout live."""

    def open_raw(self, rel: str) -> BinaryIO: ...

    def exists(self, rel: str) -> bool: ...


class _DirStore:
    def __init__(self, root: Path) -> None:
        self._root = root

    def open_raw(self, rel: str) -> BinaryIO:
        try:
            return (self._root / rel).open("rb", buffering=0)
        except FileNotFoundError:
            raise DataError(f"the image layout has no {rel}") from None
        except OSError as exc:
            raise InputOutputError.from_os_error(f"cannot open {rel}", exc) from exc

    def exists(self, rel: str) -> bool:
        return (self._root / rel).is_file()


class _TarStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._members: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if m.isreg():
                        name = "/".join(p for p in m.name.split("/") if p not in ("", "."))
                        self._members[name] = (m.offset_data, m.size)
        except tarfile.TarError as exc:
            raise DataError(f"{path} is not an uncompressed OCI archive (tar): {exc}") from None
        except OSError as exc:
            raise InputOutputError.from_os_error(f"cannot read {path}", exc) from exc

    def open_raw(self, rel: str) -> BinaryIO:
        if rel not in self._members:
            raise DataError(f"the image archive has no {rel}")
        offset, size = self._members[rel]
        return io.BufferedReader(_Window(self._path, offset, size), READ_SIZE)

    def exists(self, rel: str) -> bool:
        return rel in self._members


@dataclass
class Layout:
    """An OCI image layout opened for reading."""

    source: Path
    store: BlobStore

    def index(self) -> Json:
        if not self.store.exists("index.json"):
            raise DataError(f"{self.source} is not an OCI image layout: it has no index.json")
        with self.store.open_raw("index.json") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        return _parse_json(data, f"{self.source}/index.json")

    def open_blob(self, desc: Json, what: str) -> BinaryIO:
        """The blob of ``desc``, verified against its digest and size while read."""
        digest, size = _digest_size(desc, what)
        raw = self.store.open_raw(_blob_rel(digest))
        return io.BufferedReader(VerifiedReader(raw, digest, size, f"{what} {digest}"), READ_SIZE)

    def read_json(self, desc: Json, what: str) -> Json:
        digest, size = _digest_size(desc, what)
        if size > MAX_JSON_BYTES:
            raise DataError(f"{what} {digest} is {size} bytes; refusing JSON over {MAX_JSON_BYTES}")
        with self.open_blob(desc, what) as f:
            data = f.read()
        return _parse_json(data, f"{what} {digest}")


def open_layout(path: Path) -> Layout:
    """A directory layout or an ``oci-archive`` tar file."""
    if path.is_dir():
        return Layout(path, _DirStore(path))
    if path.is_file():
        return Layout(path, _TarStore(path))
    raise UsageError(f"{path}: no such OCI layout directory or archive")


def _digest_size(desc: Json, what: str) -> tuple[str, int]:
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise DataError(f"{what} descriptor has no valid digest and size: {desc!r:.200}")
    return digest, size


def _parse_json(data: bytes, what: str) -> Json:
    if len(data) > MAX_JSON_BYTES:
        raise DataError(f"{what} is larger than {MAX_JSON_BYTES} bytes; refusing to parse it")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{what} is not a JSON object")
    return doc


class LayoutWriter:
    """Writes a new OCI layout into ``root`` (a fresh directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def add_file(self, path: Path, digest: str) -> None:
        """Move a finished blob file into place under its digest (same filesystem: a rename)."""
        target = self.root / _blob_rel(digest)
        if target.exists():
            path.unlink()
            return
        shutil.move(path, target)

    def copy_blob(self, layout: Layout, desc: Json, what: str) -> None:
        """Copy ``desc``'s blob from ``layout`` unchanged, verified as it is read.

        Written under a temporary name and renamed, so a blob that fails its
        digest check never appears under that digest.
        """
        digest, _ = _digest_size(desc, what)
        target = self.root / _blob_rel(digest)
        if target.exists():
            return
        tmp = target.with_name(f".{target.name}.partial")
        with layout.open_blob(desc, what) as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, READ_SIZE)
        os.replace(tmp, target)

    def add_json(self, doc: Json, media_type: str) -> Json:
        """Store ``doc`` as a blob; returns its descriptor."""
        data = canonical_json(doc)
        digest = sha256_digest(data)
        target = self.root / _blob_rel(digest)
        if not target.exists():
            target.write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def finish(self, index: Json) -> None:
        (self.root / LAYOUT_FILE).write_bytes(canonical_json(LAYOUT_VERSION))
        (self.root / "index.json").write_bytes(canonical_json(index))


def write_archive(layout_dir: Path, archive: Path) -> None:
    """Tar ``layout_dir`` as an ``oci-archive``: sorted names, zero times and owners."""

    def files() -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(layout_dir):
            dirnames.sort()
            base = Path(dirpath)
            if base != layout_dir:
                yield base
            for name in sorted(filenames):
                yield base / name

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files():
            info = tar.gettarinfo(str(path), arcname=path.relative_to(layout_dir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
