"""Error classes and the exit codes they map to.

Every failure a user can cause is one of these, carrying a message written
for the user; ``cli.main`` prints it as a single stderr line and exits with
``exit_code``. Anything else escaping is a bug and is reported as such.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_USAGE = 2  # bad command line
EXIT_DATA = 65  # EX_DATAERR: corrupt, mismatched, unsupported or invalid input
EXIT_SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug)
EXIT_IO = 74  # EX_IOERR: reading stdin or writing stdout failed
EXIT_SIGPIPE = 128 + 13  # the reader went away; quiet
EXIT_SIGTERM = 128 + 15


class ProcessorError(Exception):
    """Base class: a failure with a user-facing message and an exit code."""

    exit_code = EXIT_DATA
    reason = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Set by a command whose --json report, already on stdout, carries this error and
        # its exit code (inspect): ``cli`` then adds no second JSON object.
        self.in_json_report = False


class UsageError(ProcessorError):
    """The command line or configuration is wrong."""

    exit_code = EXIT_USAGE
    reason = "usage"


class DataError(ProcessorError):
    """The input is corrupt, truncated, mismatched, unsupported or not a valid image."""

    exit_code = EXIT_DATA
    reason = "bad-data"


class InputOutputError(ProcessorError):
    """Reading the input or writing the output failed (disk full, read error)."""

    exit_code = EXIT_IO
    reason = "io"

    @classmethod
    def from_os_error(cls, what: str, exc: OSError) -> InputOutputError:
        detail = os.strerror(exc.errno) if exc.errno else str(exc)
        return cls(f"{what}: {detail}")


def no_such_file(path: object) -> UsageError:
    """The one wording for an input path that does not exist, in every command
    (``pack``, ``inspect``): the words of ``strerror(ENOENT)``, after the path."""
    return UsageError(f"{path}: no such file or directory")


class ReaderGone(Exception):
    """The consumer closed stdout (EPIPE). Not an error worth a message."""


class Terminated(Exception):
    """SIGTERM arrived; stop promptly."""
