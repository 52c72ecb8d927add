"""``erofs-stream-processor pack INPUT -o OUTPUT``: make a +zstd/+gzip EROFS layer blob."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, TextIO

from stream_processor.commands._options import (
    add_compression_arguments,
    add_mkfs_argument,
    add_threads_argument,
    check_level,
    unwinds_on_signals,
)
from stream_processor.errors import InputOutputError, UsageError, no_such_file
from stream_processor.mediatypes import Compression
from stream_processor.pack import (
    PackProgress,
    PackResult,
    add_dm_verity_arguments,
    build_image,
    chunk_size_option,
    dm_verity_option,
    pack_image,
)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a UUID: {text!r} (like 6e2c7f3a-1b1d-4c55-9a57-3f7c6a1d2e10)"
        ) from None


def _timestamp(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds since 1970: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compress a raw EROFS image (validated first) or a directory (built with mkfs.erofs) "
        "into a layer blob. zstd output is seekable by default: one frame per chunk plus a "
        "chunk table in a skippable frame; any zstd decoder still reads it. The blob is "
        "written beside OUTPUT and renamed when complete: a failed or interrupted pack "
        "leaves no file behind."
    )
    parser.add_argument(
        "input", help="raw EROFS image ('-' = stdin), or a directory to build one from"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="the blob to write ('-' = stdout); not the input"
    )
    add_compression_arguments(parser, "the layer is")
    add_threads_argument(
        parser,
        "compression threads (default 1: plain zstd and gzip bytes depend on it; "
        "the chunked layout does not)",
    )
    add_dm_verity_arguments(parser)
    parser.add_argument(
        "--uuid",
        type=_uuid,
        help="directory input only: the volume UUID (default: derived from the content, "
        "so the same tree gives the same blob)",
    )
    parser.add_argument(
        "--timestamp",
        type=_timestamp,
        metavar="SECONDS",
        help="directory input only: set the build time and every inode's time to this "
        "(default: keep the files' mtimes, build time 0)",
    )
    add_mkfs_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _identity(st: os.stat_result) -> tuple[int, int] | None:
    """(device, inode) of a regular file, the identity a hard or symbolic link shares."""
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _check_output(args: argparse.Namespace) -> None:
    """Refuse an output that is a directory or the input itself (by any name or link)."""
    if args.output == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write a binary layer to a terminal; use -o FILE")
        try:
            out_id = _identity(os.fstat(sys.stdout.fileno()))
        except (OSError, ValueError):
            out_id = None
    else:
        output = Path(args.output)
        if output.is_dir():
            raise UsageError(f"{output} is a directory; -o takes the blob's file name")
        try:
            out_id = _identity(output.stat())
        except OSError:
            return  # does not exist yet (or cannot be read): cannot be the input
    if out_id is None:
        return
    try:
        in_st = os.fstat(sys.stdin.fileno()) if args.input == "-" else os.stat(args.input)
    except (OSError, ValueError):
        return  # reported as a missing input below
    if _identity(in_st) == out_id:
        where = "stdout" if args.output == "-" else args.output
        what = "stdin" if args.input == "-" else args.input
        raise UsageError(
            f"the output {where} is the input {what}; refusing to overwrite it "
            "(write the blob to another file)"
        )


def _pack_file(image_path: Path, args: argparse.Namespace, compression: Compression) -> PackResult:
    try:
        image = open(image_path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot open {image_path}", exc) from exc
    with image:
        return _pack_stream(image, args, compression)


def _pack_stream(image: BinaryIO, args: argparse.Namespace, compression: Compression) -> PackResult:
    chunk_size = chunk_size_option(compression, args.chunk_size, args.no_chunk_table)
    total = _size_of(image)
    progress = PackProgress(sys.stderr, total, terminal=sys.stderr.isatty())

    def pack_to(out: BinaryIO) -> PackResult:
        try:
            return pack_image(
                image,
                out,
                compression=compression,
                level=args.level,
                chunk_size=chunk_size,
                threads=args.threads,
                dm_verity_block_size=dm_verity_option(args, chunk_size),
                on_progress=progress.update,
            )
        finally:
            progress.clear()

    if args.output == "-":
        return pack_to(sys.stdout.buffer)
    if _is_special(args.output):
        # A device or FIFO (-o /dev/null, a pipe) is written in place: a file renamed
        # over it would replace the device node itself.
        with open(args.output, "wb") as out:
            return pack_to(out)
    # A symlink stays a symlink: the file it points to is what gets replaced.
    output = Path(os.path.realpath(args.output))
    # Write next to the target and rename: a failed pack never leaves a partial blob.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pack-", dir=output.parent)
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot write {output}", exc) from exc
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as out:
            result = pack_to(out)
        os.replace(tmp, output)
    except BaseException:  # also SIGTERM/SIGHUP/SIGINT, raised by unwinds_on_signals
        os.unlink(tmp)
        raise
    return result


def _is_special(path: str) -> bool:
    """Does ``path`` exist as something other than a regular file or directory?"""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _size_of(image: BinaryIO) -> int | None:
    try:
        st = os.fstat(image.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def as_json(result: PackResult) -> dict[str, object]:
    """The ``--json`` record: snake_case keys, as ``inspect`` and ``convert`` print."""
    return {
        "media_type": result.media_type,
        "digest": result.digest,
        "size": result.size,
        "diff_id": result.diff_id,
        "image_size": result.image_size,
        "chunk_size": result.chunk_size,
        "annotations": result.annotations,
    }


def _print(result: PackResult, as_json_: bool, stream: TextIO) -> None:
    if as_json_:
        stream.write(json.dumps(as_json(result), indent=2) + "\n")
        return
    rows = [
        ("media type", result.media_type),
        ("digest", result.digest),
        ("size", str(result.size)),
        ("diff id", result.diff_id),
        ("image size", str(result.image_size)),
        ("chunk size", str(result.chunk_size) if result.chunk_size else "(no chunk table)"),
    ]
    rows += [(key, value) for key, value in result.annotations.items()]
    width = max(len(k) for k, _ in rows)
    stream.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))


@unwinds_on_signals
def run(args: argparse.Namespace) -> int:
    compression = Compression.of(args.compression)
    check_level(compression, args.level)
    chunk_size_option(compression, args.chunk_size, args.no_chunk_table)  # refuse early
    source = Path(args.input)
    is_dir = args.input != "-" and source.is_dir()
    if not is_dir and (args.uuid is not None or args.timestamp is not None):
        raise UsageError(
            "--uuid and --timestamp apply to a directory input only "
            f"(mkfs.erofs builds it); {args.input} is an image, packed as it is"
        )
    if args.input == "-" and sys.stdin.isatty():
        raise UsageError("refusing to read an image from a terminal; pipe one in or name a file")
    if args.input != "-" and not source.exists():
        raise no_such_file(source)
    _check_output(args)
    if args.input == "-":
        result = _pack_stream(sys.stdin.buffer, args, compression)
    elif is_dir:
        with tempfile.TemporaryDirectory(prefix="erofs-pack-") as tmp:
            image_path = Path(tmp) / "image.erofs"
            build_image(
                source, image_path, mkfs=args.mkfs, uuid=args.uuid, timestamp=args.timestamp
            )
            result = _pack_file(image_path, args, compression)
    else:
        result = _pack_file(source, args, compression)
    if args.output == "-":  # the blob went to stdout: the summary goes to stderr
        sys.stdout.flush()
        _print(result, args.json, sys.stderr)
        return 0
    _print(result, args.json, sys.stdout)
    return 0
