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

A layer is untrusted input: ``namespace.LayerNamespace`` checks each entry
before anything is written (escapes, symlinks, duplicates, hard links, the
byte budget); this module adds the check against the free disk space.
Because every path component below the root was created by this module and
is known not to be a symlink, nothing is ever written outside the root;
files are still opened with ``O_NOFOLLOW | O_EXCL`` as a second guard.

Directory modes and mtimes are applied last (deepest first), since creating
entries inside a directory changes its mtime and a read-only mode would stop
further writes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from stream_processor.convert.namespace import (
    DEFAULT_MAX_LAYER_BYTES,
    Action,
    ExtractStats,
    LayerNamespace,
    Plan,
    clean_name,
)
from stream_processor.convert.tarstream import Entry, TarReader
from stream_processor.errors import DataError, InputOutputError

__all__ = ["DEFAULT_MAX_LAYER_BYTES", "ExtractStats", "clean_name", "extract_layer"]

OPAQUE_XATTR = "trusted.overlay.opaque"
COPY_SIZE = 1 << 20
FREE_CHECK_SIZE = 1 << 20  # files at least this big are checked against the free space


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
    names: LayerNamespace
    dirs: dict[str, _DirMeta] = field(default_factory=dict)


def extract_layer(
    stream: BinaryIO,
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
) -> ExtractStats:
    """Unpack the tar ``stream`` into the empty directory ``root`` with overlay semantics.

    Reads the stream only up to the tar end-of-archive marker; the caller
    drains the rest if it needs a digest of every byte.
    """
    state = _State(root=os.fspath(root), names=LayerNamespace(max_bytes))
    state.dirs[""] = _DirMeta()
    reader = TarReader(stream)
    for member in reader:
        _apply(state, reader, member)
    _finish_dirs(state)
    return state.names.stats


def _apply(state: _State, reader: TarReader, member: Entry) -> None:
    plan = state.names.plan(member)
    try:
        for sub in plan.new_parents:
            os.mkdir(f"{state.root}/{sub}", 0o755)
            state.dirs[sub] = _DirMeta()
        action = plan.action
        path = f"{state.root}/{plan.rel}" if plan.rel else state.root
        if action is Action.DIRECTORY:
            _dir_entry(state, member, plan, path)
        elif action is Action.FILE:
            _regular(state, reader, member, path)
        elif action is Action.SYMLINK:
            os.symlink(member.linkname, path)
            _set_meta(path, member, is_link=True)
        elif action is Action.HARDLINK:
            # shares the target's inode: its metadata is the target's
            os.link(f"{state.root}/{plan.link_target}", path, follow_symlinks=False)
        elif action is Action.DEVICE:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            if member.isfifo():
                kind = stat.S_IFIFO
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            _set_meta(path, member, is_link=False)
        elif action is Action.WHITEOUT:
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
            os.lchown(path, member.uid, member.gid)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        elif action is Action.OPAQUE:
            os.setxattr(path, OPAQUE_XATTR, b"y")
    except OSError as exc:
        raise _os_error(member.name, exc) from None


def _dir_entry(state: _State, member: Entry, plan: Plan, path: str) -> None:
    if plan.new_dir:
        os.mkdir(path, 0o755)
        state.dirs[plan.rel] = _DirMeta()
    meta = state.dirs[plan.rel]
    meta.mode = member.mode & 0o7777
    meta.uid, meta.gid = member.uid, member.gid
    meta.mtime = float(member.mtime)
    meta.explicit = True
    os.chown(path, member.uid, member.gid)
    _set_xattrs(path, member)


def _regular(state: _State, reader: TarReader, member: Entry, path: str) -> None:
    size = member.size
    free = _free_bytes(state.root) if size >= FREE_CHECK_SIZE else size
    if size > free:
        raise DataError(
            f"tar entry {member.name!r} declares {size} bytes, more than the {free} bytes "
            "free in the work directory"
        )
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
            "(the dir builder keeps owners and device nodes, which needs root; "
            "--builder tar with erofs-utils >= 1.8 does not)"
        )
    if exc.errno == errno.EEXIST:
        return DataError(f"tar entry {name!r} appears twice in the layer (duplicate entry)")
    return InputOutputError.from_os_error(f"cannot unpack tar entry {name!r}", exc)
