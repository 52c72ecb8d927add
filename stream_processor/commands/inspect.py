"""``erofs-stream-processor inspect BLOB|-``: describe a layer blob for humans or scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys

from stream_processor.errors import DataError, InputOutputError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Describe a layer blob: compression, zstd frames, chunk table (and whether it "
        "verifies), skippable frames, the EROFS superblock, and what file(1) says. "
        "Exits 65 if the blob would not decode."
    )
    parser.add_argument("blob", help="the layer blob, or '-' for stdin")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="decode threads (default: CPUs available to this process)",
    )


def run(args: argparse.Namespace) -> int:
    from stream_processor.inspection import format_table, inspect_path

    threads = args.threads if args.threads is not None else len(os.sched_getaffinity(0))
    if threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.blob != "-" and not os.path.isfile(args.blob):
        raise UsageError(f"{args.blob}: no such file")
    try:
        result = inspect_path(args.blob, threads)
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot read {args.blob}", exc) from exc
    if args.json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(format_table(result))
    sys.stdout.flush()
    problems = [result.stream_error]
    if result.chunk_table is not None:
        problems.append(result.chunk_table["error"])
    if result.erofs is None:
        problems.append("no EROFS image in the decompressed data")
    elif not result.erofs["valid"]:
        problems.append(str(result.erofs["error"]))
    for problem in problems:
        if problem:
            raise DataError(f"{args.blob}: {problem}")
    return 0
