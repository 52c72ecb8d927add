"""Durable records of what happened, for when stderr is thrown away.

containerd 2.3's erofs differ discards a processor's stderr (REFERENCE.md
section 2), so each decode can append one structlog record to a log file:
event, reason, media type, bytes in/out, duration, exit code. The file is
opened with O_APPEND and each record is written with one ``write``, so
parallel decodes sharing a file never interleave within a line.

structlog costs ~80 ms to import; it is imported only when a record is
actually written. Logging never fails a decode: if the file cannot be
opened, one stderr line says logging is off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, NamedTuple

ENV_FILE = "EROFS_SP_LOG_FILE"
ENV_FORMAT = "EROFS_SP_LOG_FORMAT"
ENV_LEVEL = "EROFS_SP_LOG_LEVEL"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS = ("json", "logfmt")


class LogConfig(NamedTuple):
    """Where and how to log; built from options, falling back to the environment."""

    path: str | None = None
    fmt: str = "json"
    level: str = "warning"

    @classmethod
    def from_options(cls, path: str | None, fmt: str | None, level: str | None) -> LogConfig:
        env = os.environ
        return cls(
            path=path or env.get(ENV_FILE) or None,
            fmt=(fmt or env.get(ENV_FORMAT) or "json").lower(),
            level=(level or env.get(ENV_LEVEL) or "warning").lower(),
        )

    def enabled_for(self, level: str) -> bool:
        return self.path is not None and LEVELS.get(level, 40) >= LEVELS.get(self.level, 30)


class _LineWriter:
    """A structlog logger that writes each rendered record with one O_APPEND write."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def msg(self, message: str) -> None:
        os.write(self._fd, (message + "\n").encode("utf-8", "replace"))

    debug = info = warning = error = critical = msg


def write_record(config: LogConfig, level: str, event: str, **fields: Any) -> bool:
    """Append one record if ``config`` asks for this level. Returns False if logging is off."""
    if not config.enabled_for(level):
        return True
    assert config.path is not None
    try:
        # O_NONBLOCK: a FIFO with no reader must turn logging off, not hang the pull.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(config.path, flags, 0o644)
    except OSError as exc:
        _logging_off(config.path, exc)
        return False
    try:
        import structlog

        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
                if config.fmt == "logfmt"
                else structlog.processors.JSONRenderer(),
            ],
            logger_factory=lambda *_: _LineWriter(fd),
            cache_logger_on_first_use=False,
        )
        logger = structlog.get_logger()
        getattr(logger, level)(event, **fields)
    except OSError as exc:
        _logging_off(config.path, exc)
        return False
    finally:
        os.close(fd)
    return True


def _logging_off(path: str, exc: OSError) -> None:
    detail = os.strerror(exc.errno) if exc.errno else str(exc)
    with contextlib.suppress(OSError):
        sys.stderr.write(f"erofs-stream-processor: logging is off: cannot write {path}: {detail}\n")
