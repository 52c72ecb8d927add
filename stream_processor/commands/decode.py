"""``erofs-stream-processor [decode]``: the stream processor containerd runs."""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NamedTuple

from stream_processor import log
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
from stream_processor.mediatypes import ENV_MEDIA_TYPE, resolve
from stream_processor.payload import PayloadDrain
from stream_processor.validator import DEFAULT_MAX_OUTPUT
from stream_processor.zstd_codec import DEFAULT_MAX_WINDOW

ENV_VERIFY_DM_VERITY = "EROFS_SP_VERIFY_DM_VERITY"
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
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a thread count: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"thread count must be at least 1: {text!r}")
    return value


class _Option(NamedTuple):
    flag: str
    convert: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    boolean: bool = False  # takes no value: present means True

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


# One table for both parsers: argparse (help, errors) and parse_fast (the usual case).
OPTIONS = (
    _Option("--media-type", str, None, f"media type of the input (overrides ${ENV_MEDIA_TYPE})"),
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
        _threads,
        None,
        "threads for independent zstd frames (default: CPUs available to this process)",
    ),
    _Option(
        "--verify-dm-verity",
        bool,
        False,
        f"recompute a dm-verity frame's hash tree over the image and refuse a mismatch "
        f"(or ${ENV_VERIFY_DM_VERITY}=1); spools the image to $TMPDIR",
        boolean=True,
    ),
    _Option("--log-file", str, None, f"append a record per run to this file (or ${log.ENV_FILE})"),
    _Option(
        "--log-format",
        str,
        None,
        f"json (default) or logfmt (${log.ENV_FORMAT})",
        choices=log.FORMATS,
    ),
    _Option(
        "--log-level",
        str,
        None,
        f"warning (default: failures only) or info (also successes) (${log.ENV_LEVEL})",
        choices=tuple(log.LEVELS),
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
        if option.boolean:
            parser.add_argument(option.flag, action="store_true", **kwargs)
            continue
        if option.convert is not str:
            kwargs["type"] = option.convert
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.metavar is not None:
            kwargs["metavar"] = option.metavar
        parser.add_argument(option.flag, **kwargs)


def parse_fast(argv: list[str]) -> argparse.Namespace | None:
    """The usual command line without building an argparse parser (~5 ms per layer).

    Accepts only ``--option value`` and ``--option=value`` of the options
    above, each valid; for anything else (help, a typo, a bad value) it
    returns None and ``cli`` lets argparse parse and report it.
    """
    by_flag = {option.flag: option for option in OPTIONS}
    values = {option.dest: option.default for option in OPTIONS}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        option = by_flag.get(flag)
        if option is None:
            return None
        if option.boolean:
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
        except (ValueError, argparse.ArgumentTypeError):
            return None
        i += 1
    return argparse.Namespace(**values)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _standard_fd(fd: int, name: str) -> int:
    """``fd`` if it is open: a closed stdin/stdout (``<&-``) is an I/O error, not a crash."""
    try:
        os.fstat(fd)
    except OSError as exc:
        raise InputOutputError.from_os_error(f"{name} is not open", exc) from exc
    return fd


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    config = log.LogConfig.from_options(args.log_file, args.log_format, args.log_level)
    if config.fmt not in log.FORMATS:
        raise UsageError(f"unknown log format {config.fmt!r}; use json or logfmt")
    media_type = args.media_type or os.environ.get(ENV_MEDIA_TYPE) or None
    threads = args.threads or len(os.sched_getaffinity(0))
    verify_dm_verity = args.verify_dm_verity or os.environ.get(ENV_VERIFY_DM_VERITY, "") not in (
        "",
        "0",
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    drain = PayloadDrain().start()
    options = DecodeOptions(
        media_type,
        args.max_output_bytes,
        args.max_window_size,
        threads=threads,
        verify_dm_verity=verify_dm_verity,
    )
    result = DecodeResult(media_type)

    def record(level: str, event: str, exit_code: int, reason: str | None = None) -> None:
        if not config.enabled_for(level):
            return
        fields: dict[str, object] = {
            "reason": reason,
            "media_type": media_type,
            "compression": result.compression.value if result.compression else None,
            "bytes_in": result.bytes_in,
            "bytes_out": result.bytes_out,
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
        log.write_record(config, level, event, **fields)

    try:
        resolve(media_type)  # an unknown media type is a usage error before any input is read
        decode(_standard_fd(0, "stdin"), _standard_fd(1, "stdout"), options, result)
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
