"""Durable records of what happened, for when stderr is thrown away.

containerd 2.3's erofs differ discards a processor's stderr
(docs/stream-processor-contract.md), so each decode can append one record
to a log file: event, reason, media type, bytes in/out, duration, exit code.
The file is opened with O_APPEND and each record is written with one
``write``, so parallel decodes sharing a file never interleave within a line.

The records are rendered here, without structlog: importing it (asyncio, ssl,
typing and more) cost far more than a record may (README "Dependencies"), and
this module only needs two fixed formats.
It imports nothing beyond ``os``/``time`` (JSON strings are escaped by the C
helper behind the stdlib ``json`` module, without importing ``json`` and its
``re``), and the decode command imports it only when a record will be
written. Logging never fails a decode: if the file cannot be opened, one
stderr line says logging is off.
"""

from __future__ import annotations

import os
import sys
import time

ENV_FILE = "EROFS_SP_LOG_FILE"
ENV_FORMAT = "EROFS_SP_LOG_FORMAT"
ENV_LEVEL = "EROFS_SP_LOG_LEVEL"
# The levels records are written at; a user chooses between the two documented ones.
LEVELS = {"info": 20, "warning": 30, "error": 40}
CHOICES = ("warning", "info")
FORMATS = ("json", "logfmt")
KEY_ORDER = ("timestamp", "level", "event")

try:
    from _json import encode_basestring_ascii as _json_string
except ImportError:  # not CPython: the pure-Python encoder, same output
    from json.encoder import py_encode_basestring_ascii as _json_string


class LogConfig:
    """Where and how to log (the decode command builds it from options and environment)."""

    def __init__(self, path: str | None = None, fmt: str = "json", level: str = "warning") -> None:
        self.path = path
        self.fmt = fmt
        self.level = level

    def enabled_for(self, level: str) -> bool:
        return self.path is not None and LEVELS.get(level, 40) >= LEVELS.get(self.level, 30)


def _timestamp(now: float) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2026-12-02T20:30:01.123456Z``."""
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _json_value(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if value - value == 0 else "null"  # NaN and infinities: null
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_json_value(item) for item in value) + "]"
    return _json_string(str(value))


def _logfmt_value(value: object) -> str:
    """logfmt as structlog's ``LogfmtRenderer`` wrote it: quoted when it holds a space,
    ``=`` or ``"``; ``"`` and newlines escaped; None as an empty value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    quote = " " in text or "=" in text or '"' in text
    if quote and "\\" in text:
        text = text.replace("\\", "\\\\")
    text = text.replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"' if quote else text


def render(fmt: str, level: str, event: str, fields: dict[str, object], now: float) -> str:
    """One record as one line (no newline): timestamp, level, event, then ``fields`` in order."""
    items: list[tuple[str, object]] = [("timestamp", _timestamp(now)), ("level", level)]
    items.append(("event", event))
    items += [(key, value) for key, value in fields.items() if key not in KEY_ORDER]
    if fmt == "logfmt":
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in items)
    return "{" + ", ".join(f"{_json_string(key)}: {_json_value(v)}" for key, v in items) + "}"


def write_record(config: LogConfig, level: str, event: str, **fields: object) -> bool:
    """Append one record if ``config`` asks for this level. Returns False if logging is off."""
    if not config.enabled_for(level):
        return True
    assert config.path is not None
    line = (render(config.fmt, level, event, fields, time.time()) + "\n").encode("utf-8", "replace")
    try:
        # O_NONBLOCK: a FIFO with no reader must turn logging off, not hang the pull.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(config.path, flags, 0o644)
    except OSError as exc:
        _logging_off(config.path, exc)
        return False
    try:
        os.write(fd, line)  # one write: O_APPEND keeps parallel records whole
    except OSError as exc:
        _logging_off(config.path, exc)
        return False
    finally:
        os.close(fd)
    return True


def _logging_off(path: str, exc: OSError) -> None:
    detail = os.strerror(exc.errno) if exc.errno else str(exc)
    try:  # noqa: SIM105 - contextlib (and the collections it loads) is a record's whole budget
        sys.stderr.write(f"erofs-stream-processor: logging is off: cannot write {path}: {detail}\n")
    except OSError:
        pass
