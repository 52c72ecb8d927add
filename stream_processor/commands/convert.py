"""``erofs-stream-processor convert SRC DST``: an OCI image with tar layers -> EROFS layers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stream_processor.commands._options import (
    add_compression_arguments,
    add_mkfs_argument,
    check_level,
    parse_jobs,
    parse_size,
    unwinds_on_signals,
)
from stream_processor.errors import UsageError
from stream_processor.mediatypes import Compression


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert an OCI image layout (a directory, or an oci-archive tar as written by "
        "'skopeo copy ... oci-archive:' or 'ctr images export') into one whose layers are "
        "EROFS images (application/vnd.erofs.layer.v1+zstd by default, seekable). Tar layers "
        "are rebuilt with mkfs.erofs, EROFS layers re-wrapped; the result is reproducible."
    )
    parser.add_argument("src", type=Path, help="OCI layout directory or oci-archive tar")
    parser.add_argument(
        "dst",
        type=Path,
        help="new OCI layout directory, or oci-archive tar (--archive, or a name ending in .tar)",
    )
    add_compression_arguments(parser, "each EROFS layer is")
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
        "--jobs",
        "-j",
        type=parse_jobs,
        metavar="N",
        help="layers converted at once, 1 or more (default: CPU count)",
    )
    from stream_processor.convert.layers import Builder
    from stream_processor.pack import add_dm_verity_arguments

    add_dm_verity_arguments(parser)
    parser.add_argument(
        "--archive",
        action=argparse.BooleanOptionalAction,
        help="write DST as an oci-archive tar (the default when DST ends in .tar and is not "
        "an existing directory); --no-archive: an OCI layout directory, whatever its name",
    )
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
        choices=[b.value for b in Builder],
        default=Builder.AUTO.value,
        help="how tar layers become EROFS: 'tar' streams them into mkfs.erofs --tar=f --aufs "
        "(erofs-utils >= 1.8, no root needed), 'dir' unpacks them first (erofs-utils 1.5, "
        "needs root); default 'auto': tar when the mkfs.erofs can",
    )
    add_mkfs_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress, no summary")


def wants_archive(dst: Path, archive: bool | None) -> bool:
    """``--archive``/``--no-archive`` if given; else an archive when DST is named ``*.tar``.

    A user who types ``convert oci image.tar`` means the tar, not a directory
    with that name; an existing directory of that name is still a layout.
    """
    if archive is not None:
        return archive
    return dst.suffix == ".tar" and not dst.is_dir()


def check_not_inside(src: Path, dst: Path) -> None:
    """Refuse a DST that is SRC or inside it: converting would write into the source."""
    source, target = src.resolve(), dst.resolve()
    if target == source or source in target.parents:
        raise UsageError(
            f"the destination {dst} is {'the source' if target == source else 'inside the source'}"
            f" {src}; write the converted image elsewhere"
        )


@unwinds_on_signals
def run(args: argparse.Namespace) -> int:
    from stream_processor.convert.converter import ConvertOptions, convert_image
    from stream_processor.convert.layers import Builder, LayerSettings
    from stream_processor.convert.progress import Progress
    from stream_processor.convert.tarlayer import DEFAULT_MAX_LAYER_BYTES
    from stream_processor.pack import chunk_size_option, dm_verity_option

    compression = Compression.of(args.compression)
    check_level(compression, args.level)
    check_not_inside(args.src, args.dst)
    if args.work_dir is not None and not args.work_dir.is_dir():
        raise UsageError(f"--work-dir {args.work_dir} is not a directory")
    chunk_size = chunk_size_option(compression, args.chunk_size, args.no_chunk_table)
    settings = LayerSettings(
        compression=compression,
        chunk_size=chunk_size,
        level=args.level,
        max_layer_bytes=args.max_layer_bytes or DEFAULT_MAX_LAYER_BYTES,
        mkfs=args.mkfs,
        builder=Builder(args.builder),
        dm_verity_block_size=dm_verity_option(args, chunk_size),
    )
    options = ConvertOptions(
        settings=settings,
        jobs=args.jobs or os.cpu_count() or 1,
        platforms=tuple(args.platform),
        archive=wants_archive(args.dst, args.archive),
        work_dir=args.work_dir,
        os_features=tuple(dict.fromkeys(args.os_features)),
        keep_source=args.keep_source,
    )
    progress = Progress(sys.stderr, 0, terminal=sys.stderr.isatty(), quiet=args.quiet)
    # SIGTERM, SIGHUP and SIGINT unwind (unwinds_on_signals): the staging directory and
    # work files are removed, and the exit code is 128 + the signal.
    report = convert_image(args.src, args.dst, options, progress)
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    if not args.quiet:
        progress.summary(report.summary())
    return 0
