"""``erofs-stream-processor pack INPUT -o OUTPUT``: make a +zstd/+gzip EROFS layer blob."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, TextIO

from stream_processor.commands.decode import parse_size
from stream_processor.errors import InputOutputError, UsageError
from stream_processor.mediatypes import Compression
from stream_processor.pack import (
    PackResult,
    add_dm_verity_arguments,
    build_image,
    chunk_size_option,
    dm_verity_option,
    pack_image,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compress a raw EROFS image (validated first) or a directory (built with mkfs.erofs) "
        "into a layer blob. zstd output is seekable by default: one frame per chunk plus a "
        "chunk table in a skippable frame; any zstd decoder still reads it."
    )
    parser.add_argument(
        "input", help="raw EROFS image ('-' = stdin), or a directory to build one from"
    )
    parser.add_argument("-o", "--output", required=True, help="the blob to write ('-' = stdout)")
    parser.add_argument("--compression", choices=[c.value for c in Compression], default="zstd")
    parser.add_argument(
        "--level",
        type=int,
        help="compression level (zstd: default 3; gzip: 0-3 ISA-L, default 2, 4-9 zlib)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compression threads (default 1: plain zstd and gzip bytes depend on it; "
        "the chunked layout does not)",
    )
    parser.add_argument(
        "--chunk-size",
        type=parse_size,
        metavar="SIZE",
        help="zstd chunk size (default 4MiB)",
    )
    parser.add_argument(
        "--no-chunk-table",
        action="store_true",
        help="write a plain single-stream zstd layer instead of the seekable layout",
    )
    add_dm_verity_arguments(parser)
    parser.add_argument("--uuid", help="volume UUID when building from a directory")
    parser.add_argument(
        "--timestamp",
        type=int,
        default=0,
        help="build time and inode times when building from a directory (default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _pack_file(image_path: Path, args: argparse.Namespace, compression: Compression) -> PackResult:
    try:
        image = open(image_path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot open {image_path}", exc) from exc
    with image:
        return _pack_stream(image, args, compression)


def _pack_stream(image: BinaryIO, args: argparse.Namespace, compression: Compression) -> PackResult:
    chunk_size = chunk_size_option(compression, args.chunk_size, args.no_chunk_table)
    threads = max(1, int(args.threads))
    if args.output == "-":
        return pack_image(
            image,
            sys.stdout.buffer,
            compression=compression,
            level=args.level,
            chunk_size=chunk_size,
            threads=threads,
            dm_verity_block_size=dm_verity_option(args, chunk_size),
        )
    output = Path(args.output)
    # Write next to the target and rename: a failed pack never leaves a partial blob.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pack-", dir=output.parent or Path("."))
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot write {output}", exc) from exc
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            result = pack_image(
                image,
                out,
                compression=compression,
                level=args.level,
                chunk_size=chunk_size,
                threads=threads,
                dm_verity_block_size=dm_verity_option(args, chunk_size),
            )
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return result


def _print(result: PackResult, as_json: bool, stream: TextIO) -> None:
    record = {
        "mediaType": result.media_type,
        "digest": result.digest,
        "size": result.size,
        "diffID": result.diff_id,
        "imageSize": result.image_size,
        "chunkSize": result.chunk_size,
        "annotations": result.annotations,
    }
    if as_json:
        stream.write(json.dumps(record, indent=2) + "\n")
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


def run(args: argparse.Namespace) -> int:
    compression = Compression(args.compression)
    source = Path(args.input)
    if args.output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a binary layer to a terminal; use -o FILE")
    if args.input == "-":
        result = _pack_stream(sys.stdin.buffer, args, compression)
    elif source.is_dir():
        with tempfile.TemporaryDirectory(prefix="erofs-pack-") as tmp:
            image_path = Path(tmp) / "image.erofs"
            build_image(source, image_path, uuid=args.uuid, timestamp=args.timestamp)
            result = _pack_file(image_path, args, compression)
    elif source.exists():
        result = _pack_file(source, args, compression)
    else:
        raise UsageError(f"{source}: no such file or directory")
    if args.output == "-":  # the blob went to stdout: the summary goes to stderr
        sys.stdout.flush()
        _print(result, args.json, sys.stderr)
        return 0
    _print(result, args.json, sys.stdout)
    return 0
