"""Apply one OCI tar layer to an empty directory, the way overlayfs wants a layer.

erofs-utils 1.5 (Debian 12) has no ``--tar`` mode, so a tar layer is first
unpacked into a private directory and ``mkfs.erofs`` is run on that. The
directory must then hold exactly what an overlay lower layer holds:

- owners, modes (setuid/setgid/sticky included), mtimes, xattrs, hard links,
  symlinks, device nodes and fifos, as the tar says (we run as root);
- OCI whiteouts turned into overlayfs ones, as containerd's
  ``OverlayConvertWhiteout`` does: ``.wh.NAME`` becomes a character device
  0/0 called ``NAME`` (mode 0, the header's owner), ``.wh..wh..opq`` becomes
  the xattr ``trusted.overlay.opaque=y`` on its directory.

A layer is untrusted input. Entries are refused, naming the entry, when they
are absolute, contain ``..``, go through a symlink (or a non-directory), name
a path twice, hard-link to something outside what this layer created, or
declare more bytes than the layer budget or the free disk space. Because
every path component below the root was created by this module and is known
not to be a symlink, nothing is ever written outside the root; files are
still opened with ``O_NOFOLLOW | O_EXCL`` as a second guard.

Directory modes and mtimes are applied last (deepest first), since creating
entries inside a directory changes its mtime and a read-only mode would stop
further writes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from stream_processor.convert.tarstream import Entry, TarReader
from stream_processor.errors import DataError, InputOutputError

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
DEFAULT_MAX_LAYER_BYTES = 64 << 30
COPY_SIZE = 1 << 20
FREE_CHECK_SIZE = 1 << 20  # files at least this big are checked against the free space

_DIR, _FILE, _LINK, _OTHER = "dir", "file", "symlink", "other"


@dataclass
class ExtractStats:
    """What one layer contained; used in the conversion report and in tests."""

    entries: int = 0
    file_bytes: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    hardlinks: int = 0


@dataclass
class _DirMeta:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: float = 0.0
    explicit: bool = False


@dataclass
class _State:
    root: str  # a plain string: pathlib costs more than the syscalls on small files
    max_bytes: int
    kinds: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, _DirMeta] = field(default_factory=dict)
    stats: ExtractStats = field(default_factory=ExtractStats)
    budget_used: int = 0


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


def extract_layer(
    stream: BinaryIO,
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
    on_entry: Callable[[int], None] | None = None,
) -> ExtractStats:
    """Unpack the tar ``stream`` into the empty directory ``root`` with overlay semantics.

    Reads the stream only up to the tar end-of-archive marker; the caller
    drains the rest if it needs a digest of every byte. ``on_entry`` is
    called with the running count of file bytes, for progress.
    """
    state = _State(root=os.fspath(root), max_bytes=max_bytes)
    state.dirs[""] = _DirMeta()
    state.kinds[""] = _DIR
    reader = TarReader(stream)
    for member in reader:
        _apply(state, reader, member)
        state.stats.entries += 1
        if on_entry is not None:
            on_entry(state.stats.file_bytes)
    _finish_dirs(state)
    return state.stats


def _apply(state: _State, reader: TarReader, member: Entry) -> None:
    rel = clean_name(member.name)
    base = rel.rsplit("/", 1)[-1]
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    if base.startswith(WHITEOUT_PREFIX):
        _whiteout(state, member, parent, base)
        return
    if rel == "":
        if not member.isdir():
            raise DataError(
                f"tar entry {member.name!r} names the layer root but is not a directory"
            )
        _dir_entry(state, member, rel)
        return
    _ensure_parent(state, parent, member.name)
    if member.isdir():
        _dir_entry(state, member, rel)
        return
    _claim(state, rel, member.name)
    path = f"{state.root}/{rel}"
    try:
        if member.isreg():
            _regular(state, reader, member, path)
            state.kinds[rel] = _FILE
            return  # metadata already set through the open descriptor
        elif member.issym():
            os.symlink(member.linkname, path)
            state.kinds[rel] = _LINK
        elif member.islnk():
            state.kinds[rel] = _hardlink(state, member, path)
            state.stats.hardlinks += 1
            return  # shares the target's inode: its metadata is the target's
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            if member.isfifo():
                kind = stat.S_IFIFO
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            state.kinds[rel] = _OTHER
        else:
            raise DataError(f"tar entry {member.name!r} has an unsupported type {member.type!r}")
        _set_meta(path, member, is_link=member.issym())
    except OSError as exc:
        raise _os_error(member.name, exc) from None


def _claim(state: _State, rel: str, name: str) -> None:
    if rel in state.kinds:
        raise DataError(f"tar entry {name!r} appears twice in the layer (duplicate entry)")


def _ensure_parent(state: _State, parent: str, name: str) -> None:
    """Make sure every ancestor is a directory this layer made; create missing ones."""
    if parent in state.dirs:
        return
    parts = parent.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        kind = state.kinds.get(sub)
        if kind == _DIR:
            continue
        if kind == _LINK:
            raise DataError(
                f"tar entry {name!r} would be written through the symlink {sub!r}; refusing"
            )
        if kind is not None:
            raise DataError(f"tar entry {name!r} needs {sub!r} to be a directory, but it is not")
        try:
            os.mkdir(f"{state.root}/{sub}", 0o755)
        except OSError as exc:
            raise _os_error(name, exc) from None
        state.kinds[sub] = _DIR
        state.dirs[sub] = _DirMeta()


def _dir_entry(state: _State, member: Entry, rel: str) -> None:
    meta = state.dirs.get(rel)
    if meta is not None and meta.explicit:
        raise DataError(f"tar entry {member.name!r} appears twice in the layer (duplicate entry)")
    if meta is None:
        _claim(state, rel, member.name)
        try:
            os.mkdir(f"{state.root}/{rel}", 0o755)
        except OSError as exc:
            raise _os_error(member.name, exc) from None
        meta = _DirMeta()
        state.kinds[rel] = _DIR
        state.dirs[rel] = meta
    meta.mode = member.mode & 0o7777
    meta.uid, meta.gid = member.uid, member.gid
    meta.mtime = float(member.mtime)
    meta.explicit = True
    path = f"{state.root}/{rel}" if rel else state.root
    try:
        os.chown(path, member.uid, member.gid)
        _set_xattrs(path, member)
    except OSError as exc:
        raise _os_error(member.name, exc) from None


def _whiteout(state: _State, member: Entry, parent: str, base: str) -> None:
    _ensure_parent(state, parent, member.name)
    parent_path = f"{state.root}/{parent}" if parent else state.root
    if base == WHITEOUT_OPAQUE:
        try:
            os.setxattr(parent_path, OPAQUE_XATTR, b"y")
        except OSError as exc:
            raise _os_error(member.name, exc) from None
        state.stats.opaque_dirs += 1
        return
    if base.startswith(WHITEOUT_META_PREFIX):
        return  # other AUFS metadata (.wh..wh.plnk, ...): not part of the tree
    target = base[len(WHITEOUT_PREFIX) :]
    rel = f"{parent}/{target}" if parent else target
    if rel in state.kinds:
        raise DataError(
            f"tar entry {member.name!r} whites out {rel!r}, which this layer also adds"
            " (duplicate entry)"
        )
    path = f"{parent_path}/{target}"
    try:
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        os.lchown(path, member.uid, member.gid)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    except OSError as exc:
        raise _os_error(member.name, exc) from None
    state.kinds[rel] = _OTHER
    state.stats.whiteouts += 1


def _regular(state: _State, reader: TarReader, member: Entry, path: str) -> None:
    size = member.size
    if state.budget_used + size > state.max_bytes:
        raise DataError(
            f"tar entry {member.name!r} declares {size} bytes, more than the layer limit "
            f"of {state.max_bytes} bytes allows"
        )
    free = _free_bytes(state.root) if size >= FREE_CHECK_SIZE else size
    if size > free:
        raise DataError(
            f"tar entry {member.name!r} declares {size} bytes, more than the {free} bytes "
            "free in the work directory"
        )
    state.budget_used += size
    what = f"entry {member.name!r} (declared {size} bytes)"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        remaining = size
        while remaining:
            chunk = reader.read(min(COPY_SIZE, remaining), what)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            remaining -= len(chunk)
        # As GNU tar does: through the descriptor, no more path lookups. Owner first
        # (chown clears setuid), then mode, xattrs (chown clears capabilities), mtime.
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        for name, value in member.xattrs.items():
            os.setxattr(fd, name, value)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    state.stats.file_bytes += size


def _hardlink(state: _State, member: Entry, path: str) -> str:
    """Link ``path`` to an earlier entry of this layer; returns that entry's kind."""
    target = clean_name(member.linkname, what=f"hard link target of {member.name!r}:")
    kind = state.kinds.get(target)
    if kind is None:
        raise DataError(
            f"tar entry {member.name!r} is a hard link to {member.linkname!r}, "
            "which is not earlier in this layer"
        )
    if kind == _DIR:
        raise DataError(f"tar entry {member.name!r} is a hard link to a directory; refusing")
    target_parent = target.rsplit("/", 1)[0] if "/" in target else ""
    _ensure_parent(state, target_parent, member.name)
    os.link(f"{state.root}/{target}", path, follow_symlinks=False)
    return kind


def _set_meta(path: str, member: Entry, *, is_link: bool) -> None:
    """Owner, then mode (chown clears setuid), then xattrs (chown clears caps), then mtime."""
    os.lchown(path, member.uid, member.gid)
    if not is_link:
        os.chmod(path, member.mode & 0o7777)
    _set_xattrs(path, member)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _set_xattrs(path: str, member: Entry) -> None:
    for name, value in member.xattrs.items():
        os.setxattr(path, name, value, follow_symlinks=False)


def _finish_dirs(state: _State) -> None:
    for rel in sorted(state.dirs, key=lambda r: r.count("/") + (1 if r else 0), reverse=True):
        meta = state.dirs[rel]
        path = f"{state.root}/{rel}" if rel else state.root
        try:
            if not meta.explicit:
                os.chown(path, meta.uid, meta.gid)
            os.chmod(path, meta.mode)
            os.utime(path, (meta.mtime, meta.mtime))
        except OSError as exc:
            raise _os_error(rel or ".", exc) from None


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _os_error(name: str, exc: OSError) -> Exception:
    if exc.errno == errno.EPERM:
        return InputOutputError(
            f"cannot unpack tar entry {name!r}: operation not permitted "
            "(converting keeps owners and device nodes, which needs root)"
        )
    if exc.errno == errno.EEXIST:
        return DataError(f"tar entry {name!r} appears twice in the layer (duplicate entry)")
    return InputOutputError.from_os_error(f"cannot unpack tar entry {name!r}", exc)
