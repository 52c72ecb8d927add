"""``erofs-stream-processor inspect BLOB|-``: describe a layer blob for humans or scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from stream_processor.errors import (
    EXIT_DATA,
    EXIT_OK,
    DataError,
    InputOutputError,
    UsageError,
    no_such_file,
)
from stream_processor.mediatypes import ENV_MEDIA_TYPE, SHORT_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Describe a layer blob: compression, blob digest and diff_id, zstd frames, chunk "
        "table (and whether it verifies), dm-verity data (tree recomputed), skippable frames, "
        "the EROFS superblock, and what file(1) says. With the layer's descriptor, check its "
        "digest, size and annotations against the blob. Exits 65 if the blob would not "
        "decode or does not match its descriptor."
    )
    parser.add_argument("blob", help="the layer blob, or '-' for stdin")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--media-type",
        help=f"the layer's media type or a short name ({', '.join(SHORT_NAMES)}): picks the "
        "route as decode does (a tar layer is valid on the shared tar+zstd/tar+gzip routes); "
        f"default: the descriptor's, else ${ENV_MEDIA_TYPE}, else detect",
    )
    parser.add_argument(
        "--descriptor",
        metavar="FILE",
        help="the layer's descriptor from its manifest (JSON: mediaType, digest, size, "
        "annotations): check each against the blob",
    )
    parser.add_argument(
        "--annotations",
        metavar="JSON",
        help="the layer's annotations as a JSON object, e.g. '{\"dev.containerd.erofs."
        'zstd.chunk_digest": "sha512:..."}\': check each against the blob',
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="decode threads (default: CPUs available to this process)",
    )


def _check_input(path: str, what: str = "a layer blob") -> None:
    """A missing input (in ``pack``'s words) or a directory is a usage error."""
    if path == "-":
        return
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, not {what}")
    if not os.path.exists(path):
        raise no_such_file(path)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} is not a JSON object")
    return value


def _descriptor(args: argparse.Namespace) -> dict[str, Any] | None:
    desc: dict[str, Any] | None = None
    if args.descriptor is not None:
        _check_input(args.descriptor, "a descriptor file")
        try:
            with open(args.descriptor, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --descriptor {args.descriptor}: {exc}") from None
        desc = _json_object(text, f"--descriptor {args.descriptor}")
    if args.annotations is not None:
        notes = _json_object(args.annotations, "--annotations")
        desc = dict(desc or {})
        desc["annotations"] = {**(desc.get("annotations") or {}), **notes}
    return desc


def run(args: argparse.Namespace) -> int:
    from stream_processor.inspection import check_descriptor, format_table, inspect_path
    from stream_processor.mediatypes import resolve_name

    threads = args.threads if args.threads is not None else len(os.sched_getaffinity(0))
    if threads < 1:
        raise UsageError("--threads must be at least 1")
    _check_input(args.blob)
    desc = _descriptor(args)
    given = args.media_type or (desc or {}).get("mediaType") or os.environ.get(ENV_MEDIA_TYPE)
    # an unknown media type is a usage error before anything is read
    media_type = resolve_name(str(given)) if given else None
    try:
        result = inspect_path(args.blob, threads, media_type)
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot read {args.blob}", exc) from exc
    if desc is not None:
        result.descriptor = check_descriptor(result, desc)
    problems = result.problems()
    if args.json:  # one object on stdout, with the error and exit code a failure has
        report = {**result.as_dict(), "exit_code": EXIT_DATA if problems else EXIT_OK}
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(result))
    sys.stdout.flush()
    if problems:
        error = DataError(f"{args.blob}: {problems[0]}")
        error.in_json_report = args.json
        raise error
    return EXIT_OK
