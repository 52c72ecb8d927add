"""The rules every entry of an untrusted tar layer must obey, kept apart from what is done with it.

Both ways of building a layer use them: unpacking into a directory
(``tarlayer``, erofs-utils 1.5) and streaming the tar into
``mkfs.erofs --tar=f --aufs`` (``tarmode``, erofs-utils >= 1.8). Either way
an entry is refused, by name, when it is absolute, contains ``..``, goes
through a symlink (or another non-directory), names a path twice,
hard-links to something this layer did not create earlier (or to a
directory), whites out a path the layer also adds, has a type an image
layer has no business with, or declares more bytes than the layer budget.

``LayerNamespace.plan`` checks one entry against what the layer has named so
far and records it (and counts it in ``stats``); it touches no file system,
so a refused layer has written nothing, whichever builder runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from stream_processor.convert.tarstream import Entry
from stream_processor.errors import DataError

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
DEFAULT_MAX_LAYER_BYTES = 64 << 30

DIR, FILE, SYMLINK, OTHER = "dir", "file", "symlink", "other"


class Action(Enum):
    """What an entry does to the layer's tree."""

    DIRECTORY = "directory"  # includes the layer root itself (``rel == ""``)
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    DEVICE = "device"  # character or block device, or fifo
    WHITEOUT = "whiteout"  # .wh.NAME: NAME becomes a 0/0 character device
    OPAQUE = "opaque"  # .wh..wh..opq: the parent directory becomes opaque
    IGNORE = "ignore"  # other AUFS metadata (.wh..wh.plnk, ...): not part of the tree


class Plan(NamedTuple):
    """One accepted entry: what to do, where, and which missing parents to create first."""

    action: Action
    rel: str  # layer-relative path ("" is the root); for a whiteout, the path it hides
    new_parents: tuple[str, ...]  # ancestors not seen before, outermost first
    link_target: str = ""  # HARDLINK: the earlier entry's layer-relative path
    new_dir: bool = False  # DIRECTORY: not created before (as a parent of an earlier entry)


@dataclass
class ExtractStats:
    """What one layer contained; used in the conversion report and in tests."""

    entries: int = 0
    file_bytes: int = 0  # declared by regular files: what the layer budget counts
    whiteouts: int = 0
    opaque_dirs: int = 0
    hardlinks: int = 0

    def record(self, action: Action, size: int) -> None:
        self.entries += 1
        if action is Action.FILE:
            self.file_bytes += size
        elif action is Action.HARDLINK:
            self.hardlinks += 1
        elif action is Action.WHITEOUT:
            self.whiteouts += 1
        elif action is Action.OPAQUE:
            self.opaque_dirs += 1


def clean_name(name: str, what: str = "entry") -> str:
    """The layer-relative path of a tar name, or ``DataError`` if it would escape.

    ``./a//b/`` -> ``a/b``; ``.`` and ``./`` -> ``""`` (the layer root).
    """
    if name.startswith("/"):
        raise DataError(f"tar {what} {name!r} is an absolute path; refusing to unpack it")
    if "\0" in name:
        raise DataError(f"tar {what} {name!r} contains a NUL byte")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"tar {what} {name!r} climbs out of the layer with '..'")
    return "/".join(parts)


def _split(rel: str) -> tuple[str, str]:
    parent, _, base = rel.rpartition("/")
    return parent, base


class LayerNamespace:
    """Every path one layer has named, by kind, and what its entries add up to."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_LAYER_BYTES) -> None:
        self.max_bytes = max_bytes
        self.kinds: dict[str, str] = {"": DIR}
        self._explicit_dirs: set[str] = set()
        self.stats = ExtractStats()

    def plan(self, member: Entry) -> Plan:
        """Check ``member`` against the layer so far, record it, and say what it does."""
        plan = self._plan(member)
        self.stats.record(plan.action, member.size)
        return plan

    def _plan(self, member: Entry) -> Plan:
        rel = clean_name(member.name)
        parent, base = _split(rel)
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(member, parent, base)
        if rel == "":
            if not member.isdir():
                raise DataError(
                    f"tar entry {member.name!r} names the layer root but is not a directory"
                )
            return self._directory(member, rel, ())
        new_parents = self._parents(parent, member.name)
        if member.isdir():
            return self._directory(member, rel, new_parents)
        self._claim(rel, member.name)
        if member.isreg():
            self._charge(member)
            self.kinds[rel] = FILE
            return Plan(Action.FILE, rel, new_parents)
        if member.issym():
            self.kinds[rel] = SYMLINK
            return Plan(Action.SYMLINK, rel, new_parents)
        if member.islnk():
            target, kind = self._link_target(member)
            self.kinds[rel] = kind
            return Plan(Action.HARDLINK, rel, new_parents, link_target=target)
        if member.ischr() or member.isblk() or member.isfifo():
            self.kinds[rel] = OTHER
            return Plan(Action.DEVICE, rel, new_parents)
        raise DataError(f"tar entry {member.name!r} has an unsupported type {member.type!r}")

    def _claim(self, rel: str, name: str) -> None:
        if rel in self.kinds:
            raise DataError(f"tar entry {name!r} appears twice in the layer (duplicate entry)")

    def _parents(self, parent: str, name: str) -> tuple[str, ...]:
        """Ancestors of an entry that this layer has not named yet; all others must be dirs."""
        if self.kinds.get(parent) == DIR:
            return ()
        missing: list[str] = []
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            kind = self.kinds.get(sub)
            if kind == DIR:
                continue
            if kind == SYMLINK:
                raise DataError(
                    f"tar entry {name!r} would be written through the symlink {sub!r}; refusing"
                )
            if kind is not None:
                raise DataError(
                    f"tar entry {name!r} needs {sub!r} to be a directory, but it is not"
                )
            self.kinds[sub] = DIR
            missing.append(sub)
        return tuple(missing)

    def _directory(self, member: Entry, rel: str, new_parents: tuple[str, ...]) -> Plan:
        if rel in self._explicit_dirs:
            raise DataError(
                f"tar entry {member.name!r} appears twice in the layer (duplicate entry)"
            )
        new_dir = rel not in self.kinds
        if not new_dir and self.kinds[rel] != DIR:
            raise DataError(
                f"tar entry {member.name!r} appears twice in the layer (duplicate entry)"
            )
        self.kinds[rel] = DIR
        self._explicit_dirs.add(rel)
        return Plan(Action.DIRECTORY, rel, new_parents, new_dir=new_dir)

    def _whiteout(self, member: Entry, parent: str, base: str) -> Plan:
        new_parents = self._parents(parent, member.name)
        if base == WHITEOUT_OPAQUE:
            return Plan(Action.OPAQUE, parent, new_parents)
        if base.startswith(WHITEOUT_META_PREFIX):
            return Plan(Action.IGNORE, parent, new_parents)
        target = base[len(WHITEOUT_PREFIX) :]
        rel = f"{parent}/{target}" if parent else target
        if rel in self.kinds:
            raise DataError(
                f"tar entry {member.name!r} whites out {rel!r}, which this layer also adds"
                " (duplicate entry)"
            )
        self.kinds[rel] = OTHER
        return Plan(Action.WHITEOUT, rel, new_parents)

    def _charge(self, member: Entry) -> None:
        if self.stats.file_bytes + member.size > self.max_bytes:
            raise DataError(
                f"tar entry {member.name!r} declares {member.size} bytes, more than the layer "
                f"limit of {self.max_bytes} bytes allows"
            )

    def _link_target(self, member: Entry) -> tuple[str, str]:
        target = clean_name(member.linkname, what=f"hard link target of {member.name!r}:")
        kind = self.kinds.get(target)
        if kind is None:
            raise DataError(
                f"tar entry {member.name!r} is a hard link to {member.linkname!r}, "
                "which is not earlier in this layer"
            )
        if kind == DIR:
            raise DataError(f"tar entry {member.name!r} is a hard link to a directory; refusing")
        return target, kind
