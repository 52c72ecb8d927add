"""A config.toml on disk: read and parsed with errors in a user's words, replaced atomically.

Also the TOML strings the snippet and the merge's change list are written with.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Sequence
from typing import Any

from stream_processor.errors import DataError, InputOutputError, UsageError, no_such_file
from stream_processor.signals import unwinding

DEFAULT_BACKUP_SUFFIX = ".bak"


def toml_string(value: str) -> str:
    """A TOML basic string (double quotes, escapes for backslash, quote and control bytes)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def read_text(path: str | os.PathLike[str]) -> str:
    """A config.toml's text; errors name the file and say what is wrong with it.

    A missing file is a usage error with the words every command uses for a
    missing input ("PATH: no such file or directory", exit 2).
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise no_such_file(name) from None
    except IsADirectoryError:
        raise UsageError(f"not a file: {name}") from None
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot read {name}", exc) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not valid TOML: not UTF-8 text ({exc.reason})") from exc


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse the config.toml at ``path``."""
    return parse_config(read_text(path), os.fspath(path))


def parse_config(text: str, source: str) -> dict[str, Any]:
    """Parse config.toml text; the error names ``source`` and tomllib's line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{source} is not valid TOML: {exc}") from exc


def read_text_lf(path: str) -> str:
    """The file's text with newlines as text-mode reading gives them (the merge writes \\n)."""
    return read_text(path).replace("\r\n", "\n").replace("\r", "\n")


def check_backup_suffix(suffix: str) -> str:
    if not suffix or "/" in suffix or suffix in (".", ".."):
        raise UsageError(f"--backup needs a file name suffix such as .bak, not {suffix!r}")
    return suffix


def write(path: str, before: str, after: str, backup_suffix: str = DEFAULT_BACKUP_SUFFIX) -> str:
    """Replace ``path`` with ``after`` atomically, keeping ``before`` as PATH+suffix.

    Both files are written to temporaries in the target's directory, fsynced
    and renamed over, so a crash leaves either the old or the new file, never
    a mix, and no temporary. Mode and owner follow the original. Returns the
    backup's path.
    """
    target = os.path.realpath(path)  # a symlinked config stays a symlink
    backup = target + check_backup_suffix(backup_suffix)
    try:
        st = os.stat(target)
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot write {path}", exc) from exc
    with unwinding():  # SIGTERM/SIGHUP/SIGINT: the staged temporaries are removed
        _replace_all(((backup, before), (target, after)), st, path)
    return backup


def _replace_all(files: tuple[tuple[str, str], ...], st: os.stat_result, path: str) -> None:
    """Stage every (destination, text) first, then rename each over its destination."""
    staged: list[tuple[str, str]] = []
    try:
        for dest, text in files:
            staged.append((_stage(dest, text.encode("utf-8"), st), dest))
        for tmp, dest in staged:
            os.replace(tmp, dest)
        _fsync_dir(os.path.dirname(files[-1][0]))
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot write {path}", exc) from exc
    finally:
        for tmp, _ in staged:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _stage(dest: str, data: bytes, st: os.stat_result) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", dir=os.path.dirname(dest))
    try:
        os.fchmod(fd, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
