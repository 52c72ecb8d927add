"""Command line: pick a subcommand, parse its arguments, turn errors into exit codes.

Kept thin on purpose (like imgcrypt's ``ctd-decoder``): each subcommand lives
in ``stream_processor.commands.<name>`` with ``add_arguments`` and ``run``, and
only the one being run is imported, because containerd starts this program
once per layer and start-up time is paid on every pull.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from stream_processor import PROG, __version__
from stream_processor.errors import (
    EXIT_SIGPIPE,
    EXIT_SIGTERM,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    ProcessorError,
    ReaderGone,
    Terminated,
)

COMMANDS: dict[str, str] = {
    "decode": "stream_processor.commands.decode",
    "pack": "stream_processor.commands.pack",
    "inspect": "stream_processor.commands.inspect",
    "config": "stream_processor.commands.config",
    "convert": "stream_processor.commands.convert",
}

SUMMARY = f"""usage: {PROG} [decode] [options] < layer > image
       {PROG} COMMAND [options]

With no command (or 'decode') this is the containerd stream processor: a
compressed EROFS layer on stdin, the validated raw EROFS image on stdout.

commands:
  decode    decompress and validate a layer (default)
  pack      wrap a raw EROFS image or a directory as a +zstd/+gzip layer
  inspect   describe a layer: framing, chunk table, EROFS superblock
  config    print or check the containerd configuration
  convert   convert an OCI image's tar layers into EROFS layers

'{PROG} COMMAND --help' describes each command.
"""


class _Formatter(argparse.HelpFormatter):
    """A fixed width: argparse would otherwise import ``shutil`` and ask the
    terminal its size for every ``add_argument``, on every layer's start-up."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


class Command(Protocol):
    """What every ``stream_processor.commands`` module provides.

    A module may also offer ``parse_fast(argv) -> Namespace | None`` to skip
    building an argparse parser for its usual command lines (decode does).
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _split(argv: Sequence[str]) -> tuple[str, list[str]]:
    if argv and argv[0] in COMMANDS:
        return argv[0], list(argv[1:])
    return "decode", list(argv)


def _error(message: str) -> None:
    """One line on stderr, prefixed with the program name; never raises."""
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] in (["-h"], ["--help"], ["help"]):
        sys.stdout.write(SUMMARY)
        return 0
    if args_in[:1] == ["--version"]:
        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    name, rest = _split(args_in)
    command: Command = importlib.import_module(COMMANDS[name])
    parse_fast = getattr(command, "parse_fast", None)
    args = parse_fast(rest) if parse_fast is not None else None
    if args is None:
        parser = argparse.ArgumentParser(
            prog=f"{PROG} {name}" if name != "decode" else PROG, formatter_class=_Formatter
        )
        command.add_arguments(parser)
        try:
            args = parser.parse_args(rest)
        except SystemExit as exc:  # argparse already printed its one-line usage error
            return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return command.run(args)
    except ProcessorError as exc:
        _error(exc.message)
        return exc.exit_code
    except ReaderGone:
        return EXIT_SIGPIPE
    except Terminated:
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_SIGPIPE
    except Exception as exc:  # a bug: still one line, no traceback, unless asked for
        if os.environ.get("EROFS_SP_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_SOFTWARE
