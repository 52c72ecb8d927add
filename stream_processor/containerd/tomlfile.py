"""Reading a config.toml (errors in a user's words) and writing TOML strings."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from typing import Any

from stream_processor.errors import DataError, InputOutputError, UsageError, no_such_file


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
