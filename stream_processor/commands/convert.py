"""``erofs-stream-processor convert SRC DST``: an OCI image with tar layers -> EROFS layers."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from stream_processor.commands.decode import parse_size
from stream_processor.errors import Terminated, UsageError
from stream_processor.mediatypes import Compression


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert an OCI image layout (a directory, or an oci-archive tar as written by "
        "'skopeo copy ... oci-archive:' or 'ctr images export') into one whose layers are "
        "EROFS images (application/vnd.erofs.layer.v1+zstd by default, seekable). Tar layers "
        "are rebuilt with mkfs.erofs, EROFS layers re-wrapped; the result is reproducible."
    )
    parser.add_argument("src", type=Path, help="OCI layout directory or oci-archive tar")
    parser.add_argument("dst", type=Path, help="new OCI layout directory (or tar with --archive)")
    parser.add_argument("--compression", choices=[c.value for c in Compression], default="zstd")
    parser.add_argument("--level", type=int, help="compression level (zstd default 3)")
    parser.add_argument(
        "--chunk-size",
        type=parse_size,
        metavar="SIZE",
        help="zstd chunk size of the seekable layout (default 4MiB)",
    )
    parser.add_argument(
        "--no-chunk-table",
        action="store_true",
        help="plain single-stream zstd layers instead of the seekable layout",
    )
    parser.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="convert only this platform (repeatable; default: all)",
    )
    parser.add_argument(
        "--os-feature",
        action="append",
        choices=["erofs"],
        default=[],
        dest="os_features",
        help="mark each EROFS manifest (index entry and config) with this platform OS feature, "
        "as 'ctr images convert --erofs' does; then only a pull for 'linux(+erofs)/ARCH' "
        "selects it (not CRI, see the README). Default: no feature, which every pull selects",
    )
    parser.add_argument(
        "--keep-source",
        action="store_true",
        help="mixed fleets: the index keeps each source tar manifest next to its EROFS one, "
        "which is marked with the OS feature erofs (implies --os-feature erofs)",
    )
    parser.add_argument(
        "--jobs", "-j", type=int, default=0, help="layers converted at once (default: CPU count)"
    )
    from stream_processor.pack import add_dm_verity_arguments

    add_dm_verity_arguments(parser)
    parser.add_argument("--archive", action="store_true", help="write DST as an oci-archive tar")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where tar layers are unpacked and raw images built (default: next to DST)",
    )
    parser.add_argument(
        "--max-layer-bytes",
        type=parse_size,
        metavar="SIZE",
        help="refuse a tar layer whose files add up to more than this (default 64GiB)",
    )
    parser.add_argument(
        "--builder",
        choices=["auto", "tar", "dir"],
        default="auto",
        help="how tar layers become EROFS: 'tar' streams them into mkfs.erofs --tar=f --aufs "
        "(erofs-utils >= 1.8, no root needed), 'dir' unpacks them first (erofs-utils 1.5, "
        "needs root); default 'auto': tar when the mkfs.erofs can",
    )
    parser.add_argument(
        "--mkfs",
        default=os.environ.get("EROFS_SP_MKFS") or "mkfs.erofs",
        metavar="PATH",
        help="the mkfs.erofs to run (default: $EROFS_SP_MKFS, else mkfs.erofs on PATH)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress, no summary")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def run(args: argparse.Namespace) -> int:
    from stream_processor.convert.converter import ConvertOptions, convert_image
    from stream_processor.convert.layers import LayerSettings
    from stream_processor.convert.progress import Progress
    from stream_processor.convert.tarlayer import DEFAULT_MAX_LAYER_BYTES
    from stream_processor.pack import chunk_size_option, dm_verity_option

    compression = Compression(args.compression)
    if args.jobs < 0:
        raise UsageError("--jobs must be 0 (CPU count) or more")
    if args.work_dir is not None and not args.work_dir.is_dir():
        raise UsageError(f"--work-dir {args.work_dir} is not a directory")
    chunk_size = chunk_size_option(compression, args.chunk_size, args.no_chunk_table)
    settings = LayerSettings(
        compression=compression,
        chunk_size=chunk_size,
        level=args.level,
        max_layer_bytes=args.max_layer_bytes or DEFAULT_MAX_LAYER_BYTES,
        mkfs=args.mkfs,
        builder=args.builder,
        dm_verity_block_size=dm_verity_option(args, chunk_size),
    )
    options = ConvertOptions(
        settings=settings,
        jobs=args.jobs or os.cpu_count() or 1,
        platforms=tuple(args.platform),
        archive=args.archive,
        work_dir=args.work_dir,
        os_features=tuple(dict.fromkeys(args.os_features)),
        keep_source=args.keep_source,
    )
    progress = Progress(sys.stderr, 0, terminal=sys.stderr.isatty(), quiet=args.quiet)
    # SIGTERM unwinds like Ctrl-C, so the staging directory and work files are removed.
    signal.signal(signal.SIGTERM, _on_sigterm)
    report = convert_image(args.src, args.dst, options, progress)
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    if not args.quiet:
        progress.summary(report.summary())
    return 0
