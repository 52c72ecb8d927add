"""Command line: pick a subcommand, parse its arguments, turn errors into exit codes.

Kept thin on purpose (like imgcrypt's ``ctd-decoder``): each subcommand lives
in ``stream_processor.commands.<name>`` with ``add_arguments`` and ``run``, and
only the one being run is imported, because containerd starts this program
once per layer and start-up time is paid on every pull.
"""

from __future__ import annotations

import importlib
import os
import sys

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

TYPE_CHECKING = False  # typing.TYPE_CHECKING: typing and argparse never load on a layer's start
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn, Protocol

    class Command(Protocol):
        """What every ``stream_processor.commands`` module provides.

        A module may also offer ``parse_fast(argv) -> args | None`` to skip
        building an argparse parser for its usual command lines (decode does).
        """

        def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

        def run(self, args: Any) -> int: ...


COMMANDS: dict[str, str] = {
    "decode": "stream_processor.commands.decode",
    "pack": "stream_processor.commands.pack",
    "inspect": "stream_processor.commands.inspect",
    "config": "stream_processor.commands.config",
    "convert": "stream_processor.commands.convert",
}

SUMMARY = f"""usage: {PROG} [decode] [options] < layer > image
       {PROG} COMMAND [options]
       {PROG} help [COMMAND]

With no command (or 'decode') this is the containerd stream processor: a
compressed EROFS layer on stdin, the validated raw EROFS image on stdout.

commands:
  decode    decompress and validate a layer (default)
  pack      wrap a raw EROFS image or a directory as a +zstd/+gzip layer
  inspect   describe a layer: framing, chunk table, EROFS superblock
  config    print or check the containerd configuration
  convert   convert an OCI image's tar layers into EROFS layers

'{PROG} COMMAND --help' (or '{PROG} help COMMAND') describes each command.
"""


class UnknownCommand(Exception):
    """The first argument is neither an option nor a command."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown command {name!r}; commands: {', '.join(COMMANDS)} (see '{PROG} --help')"
        )


def _parser(name: str) -> argparse.ArgumentParser:
    """An argparse parser whose usage errors are one line on stderr (exit 2); the
    line is kept in ``failure`` for a ``--json`` error object."""
    import argparse

    class _Formatter(argparse.HelpFormatter):
        """A fixed width: argparse would otherwise ask the terminal its size."""

        def __init__(self, prog: str) -> None:
            super().__init__(prog, width=100)

    class _Parser(argparse.ArgumentParser):
        failure: str | None = None

        def error(self, message: str) -> Any:  # argparse prints usage + error: two lines
            self.failure = f"{message} (see '{self.prog} --help')"
            _error(self.failure)
            raise SystemExit(EXIT_USAGE)

    prog = f"{PROG} {name}" if name != "decode" else PROG
    return _Parser(prog=prog, formatter_class=_Formatter)


def _split(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(command, its arguments). No command means decode, so ``PROG < layer`` and
    ``PROG --media-type X`` are the stream processor; a first argument that is
    not an option must then be a command (or ``help [COMMAND]``)."""
    if not argv:
        return "decode", []
    first = argv[0]
    if first in COMMANDS:
        return first, list(argv[1:])
    if first == "help" and len(argv) > 1:
        if argv[1] not in COMMANDS:
            raise UnknownCommand(argv[1])
        return argv[1], ["--help"]
    if not first.startswith("-"):
        raise UnknownCommand(first)
    return "decode", list(argv)


def _error(message: str) -> None:
    """One line on stderr, prefixed with the program name; never raises."""
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass


def _asked_for_json(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """``--json`` on a command line that failed to parse, for a command that has it."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return parser.get_default("json") is False and "--json" in options


def _json_error(message: str, exit_code: int, stdout_is_data: bool) -> None:
    """Under ``--json`` a failure is also one JSON object, ``{"error", "exit_code"}``, where
    the command's report would go: stdout, or stderr when stdout carries a layer
    (``pack -o -``). ``json`` is imported only here: decode has no ``--json``."""
    import json

    stream = sys.stderr if stdout_is_data else sys.stdout
    try:
        stream.write(json.dumps({"error": message, "exit_code": exit_code}) + "\n")
        stream.flush()
    except OSError:
        pass


def _fail(
    args: Any, message: str, exit_code: int, *, in_report: bool = False, line: bool = True
) -> int:
    """Report a failure of ``run``: the stderr line (none for a signal), and the JSON
    object under ``--json`` unless the command's own JSON report already carries it."""
    if line:
        _error(message)
    if getattr(args, "json", False) is True and not in_report:
        _json_error(message, exit_code, getattr(args, "output", None) == "-")
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in in (["-h"], ["--help"], ["help"]):
        sys.stdout.write(SUMMARY)
        return 0
    if args_in == ["--version"]:
        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    try:
        name, rest = _split(args_in)
    except UnknownCommand as exc:
        _error(str(exc))
        return EXIT_USAGE
    command: Command = importlib.import_module(COMMANDS[name])
    parse_fast = getattr(command, "parse_fast", None)
    args = parse_fast(rest) if parse_fast is not None else None
    if args is None:
        parser = _parser(name)
        command.add_arguments(parser)
        try:
            args = parser.parse_args(rest)
        except SystemExit as exc:  # help (0) or a usage error already reported in one line
            code = int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
            failure = getattr(parser, "failure", None)
            if failure is not None and _asked_for_json(parser, rest):
                _json_error(failure, code, stdout_is_data=False)
            return code
        except ProcessorError as exc:  # an option check that raised rather than reported
            _error(exc.message)
            if _asked_for_json(parser, rest):
                _json_error(exc.message, exc.exit_code, stdout_is_data=False)
            return exc.exit_code
    try:
        return command.run(args)
    except ProcessorError as exc:
        return _fail(args, exc.message, exc.exit_code, in_report=exc.in_json_report)
    except ReaderGone:
        return EXIT_SIGPIPE
    except Terminated:
        return _fail(args, "terminated (SIGTERM)", EXIT_SIGTERM, line=False)
    except KeyboardInterrupt:
        return _fail(args, "interrupted (SIGINT)", 130, line=False)
    except BrokenPipeError:
        return EXIT_SIGPIPE
    except Exception as exc:  # a bug: still one line, no traceback, unless asked for
        if os.environ.get("EROFS_SP_DEBUG"):
            raise
        return _fail(args, f"internal error: {type(exc).__name__}: {exc}", EXIT_SOFTWARE)


def run() -> NoReturn:
    """The program: ``main``, then, for a decode, exit without the interpreter's teardown.

    containerd waits for the processor to exit before it moves to the layer's next
    step, and a decode has nothing left to do once ``main`` returns: its output went
    out with ``os.writev``, a log record with one ``os.write``, and its threads have
    finished. Python's teardown (module clean-up, freeing the heap) still cost
    every layer time (README "Performance"), so a decode leaves with ``os._exit``
    after flushing Python's own stdout and stderr. Other commands exit normally:
    ``convert``'s worker pool and ``tempfile`` rely on the usual shutdown.
    """
    code = main()
    try:
        decoding = _split(sys.argv[1:])[0] == "decode"
    except UnknownCommand:
        decoding = False
    if not decoding:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):  # None where the descriptor was never open
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be said
            pass
    os._exit(code)
