"""``erofs-stream-processor [decode]``: the stream processor containerd runs.

Start-up is paid once per layer (docs/stream-processor-contract.md), so this
module imports neither argparse (only ``add_arguments`` and a bad command
line need it; the usual one goes through ``parse_fast``) nor ``log`` (only
when a record will be written).
"""

from __future__ import annotations

import os
import time

from stream_processor.decode import DecodeOptions, DecodeResult, decode
from stream_processor.errors import (
    EXIT_OK,
    EXIT_SIGPIPE,
    EXIT_SIGTERM,
    InputOutputError,
    ProcessorError,
    ReaderGone,
    Terminated,
    UsageError,
)
from stream_processor.framing import DEFAULT_MAX_WINDOW
from stream_processor.mediatypes import ENV_MEDIA_TYPE, SHORT_NAMES, resolve_name
from stream_processor.payload import PayloadDrain
from stream_processor.validator import DEFAULT_MAX_OUTPUT

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from signal import SIGTERM
    from signal import signal as set_signal_handler
    from types import FrameType
    from typing import Any
else:
    # The C module under ``signal``: ``signal`` wraps its numbers in ``enum``s, and
    # ``enum`` (with the ``functools`` and ``collections`` it loads) is a measurable
    # share of a layer's start-up (README "Performance"); one handler needs none of it.
    from _signal import SIGTERM
    from _signal import signal as set_signal_handler

# The same names as in ``log`` (a test checks): here so that a decode that
# writes no record never imports it.
ENV_LOG_FILE = "EROFS_SP_LOG_FILE"
ENV_LOG_FORMAT = "EROFS_SP_LOG_FORMAT"
ENV_LOG_LEVEL = "EROFS_SP_LOG_LEVEL"
LOG_FORMATS = ("json", "logfmt")
LOG_LEVELS = ("warning", "info")
ENV_VERIFY_DM_VERITY = "EROFS_SP_VERIFY_DM_VERITY"
ENV_VERIFY_FRAME_HASHES = "EROFS_SP_VERIFY_FRAME_HASHES"


def _bad(message: str) -> Exception:
    """argparse's "bad value" error, importing argparse only on this error path."""
    import argparse

    return argparse.ArgumentTypeError(message)


_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``4194304``, ``4MiB``, ``4M``, ``64GiB`` -> bytes."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    if raw and raw[-1] in _SUFFIXES:
        factor = _SUFFIXES[raw[-1]]
        raw = raw[:-1]
    try:
        value = int(raw) * factor
    except ValueError:
        raise _bad(f"not a size: {text!r}") from None
    if value <= 0:
        raise _bad(f"size must be positive: {text!r}")
    return value


def parse_threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"not a thread count: {text!r}") from None
    if value < 1:
        raise _bad(f"thread count must be at least 1: {text!r}")
    return value


def parse_switch(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (an environment switch)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise _bad(f"not a switch: {text!r} (use 1 or 0)")


# One thread unless told otherwise: on real containerd 2.3.4 pulls (README
# "Performance", ``bench_containerd.py``) one thread streaming every frame through
# the sink's ring beat two threads pooling frames, with either unpack concurrency:
# containerd's own side (SHA-256, the file write) takes a core, and pooled frames
# cost a fresh buffer each. ``--threads`` (or the config's ``args``) is for nodes
# with cores to spare.
DEFAULT_THREADS = 1


class _Option:
    """One decode option, for both parsers."""

    __slots__ = ("choices", "convert", "default", "flag", "help", "metavar", "switch")

    def __init__(
        self,
        flag: str,
        convert: Callable[[str], Any],
        default: Any,
        help: str,
        choices: tuple[str, ...] | None = None,
        metavar: str | None = None,
        switch: bool = False,  # a flag without a value: present means True
    ) -> None:
        self.flag = flag
        self.convert = convert
        self.default = default
        self.help = help
        self.choices = choices
        self.metavar = metavar
        self.switch = switch

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


# One table for both parsers: argparse (help, errors) and parse_fast (the usual case).
OPTIONS = (
    _Option(
        "--media-type",
        str,
        None,
        f"the layer's media type or a short name ({', '.join(SHORT_NAMES)}); "
        f"overrides ${ENV_MEDIA_TYPE}",
    ),
    _Option(
        "--max-output-bytes",
        parse_size,
        DEFAULT_MAX_OUTPUT,
        "refuse to produce more than this (default 64GiB)",
        metavar="SIZE",
    ),
    _Option(
        "--max-window-size",
        parse_size,
        DEFAULT_MAX_WINDOW,
        "largest zstd window accepted (default 128MiB, as zstd -d)",
        metavar="SIZE",
    ),
    _Option(
        "--threads",
        parse_threads,
        DEFAULT_THREADS,
        "threads for independent zstd frames (default 1: measured fastest inside containerd "
        "on a 2-CPU node; more only where cores are to spare)",
    ),
    _Option(
        "--verify-dm-verity",
        parse_switch,
        False,
        f"recompute a dm-verity frame's hash tree over the image and refuse a mismatch "
        f"(or ${ENV_VERIFY_DM_VERITY}=1); spools the image to $TMPDIR",
        switch=True,
    ),
    _Option(
        "--verify-frame-hashes",
        parse_switch,
        False,
        "also check each chunk's SHA-512 in a seekable layer's chunk table (off: containerd "
        f"checks the blob's and the image's SHA-256; or ${ENV_VERIFY_FRAME_HASHES}=1)",
        switch=True,
    ),
    _Option("--log-file", str, None, f"append a record per run to this file (or ${ENV_LOG_FILE})"),
    _Option(
        "--log-format",
        str,
        None,
        f"json (default) or logfmt (${ENV_LOG_FORMAT})",
        choices=LOG_FORMATS,
    ),
    _Option(
        "--log-level",
        str,
        None,
        f"warning (default: failures only) or info (also successes) (${ENV_LOG_LEVEL})",
        choices=LOG_LEVELS,
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Read a compressed EROFS layer on stdin and write the validated raw EROFS image "
        "on stdout (on the shared tar+zstd/tar+gzip routes, a tar layer passes through "
        "unchanged). The media type comes from --media-type or $STREAM_PROCESSOR_MEDIATYPE; "
        "without either, the compression is detected and EROFS is expected."
    )
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"default": option.default, "help": option.help}
        if option.switch:
            kwargs["action"] = "store_true"
        elif option.convert is not str:
            kwargs["type"] = option.convert
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.metavar is not None:
            kwargs["metavar"] = option.metavar
        parser.add_argument(option.flag, **kwargs)


class ParsedArgs:
    """What ``parse_fast`` returns: attributes like argparse's ``Namespace`` (and equal to
    one with the same values), without importing argparse."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __eq__(self, other: object) -> bool:
        return vars(self) == vars(other) if hasattr(other, "__dict__") else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ParsedArgs({vars(self)!r})"


def parse_fast(argv: list[str]) -> ParsedArgs | None:
    """The usual command line without importing argparse or building its parser.

    Accepts only ``--option value`` and ``--option=value`` of the options
    above (a switch only bare), each valid; for anything else (help, a typo,
    a bad value) it returns None and ``cli`` lets argparse parse and report it.
    """
    by_flag = {option.flag: option for option in OPTIONS}
    values = {option.dest: option.default for option in OPTIONS}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        option = by_flag.get(flag)
        if option is None:
            return None
        if option.switch:
            if eq:
                return None
            values[option.dest] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                return None
            i += 1
            value = argv[i]
            if value.startswith("-"):  # argparse reads that as a missing value
                return None
        if option.choices is not None and value not in option.choices:
            return None
        try:
            values[option.dest] = option.convert(value)
        except Exception:  # ValueError or argparse's error: argparse will report it
            return None
        i += 1
    return ParsedArgs(**values)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _standard_fd(fd: int, name: str) -> int:
    """``fd`` if it is open: a closed stdin/stdout (``<&-``) is an I/O error, not a crash."""
    try:
        os.fstat(fd)
    except OSError as exc:
        raise InputOutputError.from_os_error(f"{name} is not open", exc) from exc
    return fd


class _LogTarget:
    """Where and how records go, decided without importing ``log``: the generated
    containerd config always sets a log file, but a record is written only on failure
    (or on success at ``info``), so most layers never import it."""

    __slots__ = ("fmt", "level", "path")

    def __init__(self, path: str, fmt: str, level: str) -> None:
        self.path = path
        self.fmt = fmt
        self.level = level

    def wants(self, level: str) -> bool:
        return level != "info" or self.level == "info"


def _log_target(args: Any) -> _LogTarget | None:
    """The log file and its format and level, or None without a log file."""
    fmt = (args.log_format or os.environ.get(ENV_LOG_FORMAT) or "json").lower()
    level = (args.log_level or os.environ.get(ENV_LOG_LEVEL) or "warning").lower()
    if fmt not in LOG_FORMATS:
        raise UsageError(f"unknown log format {fmt!r}; use json or logfmt")
    if level not in LOG_LEVELS:
        raise UsageError(f"unknown log level {level!r}; use warning or info")
    path = args.log_file or os.environ.get(ENV_LOG_FILE) or None
    return _LogTarget(path, fmt, level) if path is not None else None


def _env_switch(given: bool, env: str) -> bool:
    """A switch on the command line, else from containerd's ``env`` (1/0, true/false...)."""
    if given:
        return True
    value = os.environ.get(env)
    if value is None:
        return False
    try:
        return parse_switch(value)
    except Exception:
        raise UsageError(f"{env}={value!r} is not a switch; use 1 or 0") from None


def _check_terminals() -> None:
    """An image is binary and the input never ends on a terminal: refuse both up front
    rather than print an image into a terminal or wait silently for keystrokes."""
    if os.isatty(0):
        raise UsageError("stdin is a terminal; give the layer on stdin (< layer.blob)")
    if os.isatty(1):
        raise UsageError("refusing to write an EROFS image to a terminal; redirect stdout")


def run(args: Any) -> int:
    started = time.monotonic()
    target = _log_target(args)
    given = args.media_type or os.environ.get(ENV_MEDIA_TYPE) or None
    media_type = given
    set_signal_handler(SIGTERM, _on_sigterm)
    drain = PayloadDrain().start()
    result = DecodeResult(media_type)

    def record(level: str, event: str, exit_code: int, reason: str | None = None) -> None:
        if target is None or not target.wants(level):
            return
        from stream_processor import log

        fields: dict[str, object] = {
            "reason": reason,
            "media_type": media_type,
            "compression": result.compression.value if result.compression else None,
            "bytes_in": result.bytes_in,  # read from stdin
            "bytes_out": result.bytes_out,  # reached stdout
            "duration_s": round(time.monotonic() - started, 4),
            "exit_code": exit_code,
            "pid": os.getpid(),
        }
        if result.verdict is not None:
            fields["payload"] = result.verdict.kind.value
        if result.zstd.frames:
            fields["frames"] = result.zstd.frames
        if drain.present:
            fields["fd3_payload_bytes"] = drain.received
        if result.notes:
            fields["notes"] = result.notes
        log.write_record(
            log.LogConfig(target.path, target.fmt, target.level), level, event, **fields
        )

    try:
        # An unknown media type is a usage error before any input is read; a short name
        # (tar+zstd) is the media type config --routes registers for it.
        media_type = result.media_type = resolve_name(given) if given else None
        in_fd, out_fd = _standard_fd(0, "stdin"), _standard_fd(1, "stdout")
        _check_terminals()
        options = DecodeOptions(
            media_type,
            args.max_output_bytes,
            args.max_window_size,
            threads=args.threads,
            verify_dm_verity=_env_switch(args.verify_dm_verity, ENV_VERIFY_DM_VERITY),
            verify_frame_hashes=_env_switch(args.verify_frame_hashes, ENV_VERIFY_FRAME_HASHES),
            tune_malloc=True,  # this process decodes one layer and exits
        )
        decode(in_fd, out_fd, options, result)
    except ProcessorError as exc:
        record("error", "decode_failed", exc.exit_code, f"{exc.reason}: {exc.message}")
        raise
    except ReaderGone:
        record("info", "reader_closed", EXIT_SIGPIPE, "the reader closed stdout early")
        raise
    except Terminated:
        record("warning", "terminated", EXIT_SIGTERM, "SIGTERM")
        raise
    record("info", "decoded", EXIT_OK)
    return EXIT_OK
