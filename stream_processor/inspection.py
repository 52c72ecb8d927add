"""Describing a layer blob: framing, chunk table, EROFS superblock, and what file(1) says.

``inspect`` runs the real decoder over the blob (so "verifies" means exactly
what the decode path would accept) but throws the output away, keeping only
the first ``HEAD_KEEP`` bytes for the superblock and libmagic. The chunk-table
verifier is reused as the frame recorder; its verdict is recorded instead of
raised, so a blob with a bad table is still described.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stream_processor import compression as codecs
from stream_processor import superblock
from stream_processor.errors import DataError
from stream_processor.gzip_codec import GzipStats, decode_gzip
from stream_processor.mediatypes import Compression
from stream_processor.seekable import ChunkTable, ChunkTableVerifier
from stream_processor.source import Source
from stream_processor.zstd_codec import DEFAULT_MAX_WINDOW, ZstdStats

HEAD_KEEP = 64 * 1024  # the largest EROFS block: enough for any superblock and for libmagic
FRAMES_SHOWN = 16  # the human table lists frames one by one up to this many


class _Recorder(ChunkTableVerifier):
    """The verifier, but a table mismatch is noted rather than raised."""

    def __init__(self) -> None:
        super().__init__()
        self.table_error: str | None = None
        self.total_out = 0

    def finish(self, total_out: int, end_offset: int) -> None:
        self.total_out = total_out
        try:
            super().finish(total_out, end_offset)
        except DataError as exc:
            self.table_error = exc.message


@dataclass
class Inspection:
    """Everything ``inspect`` reports; ``as_dict`` is the ``--json`` form."""

    compression: str
    blob_size: int = 0
    decompressed_size: int = 0
    file_blob: str = ""
    file_image: str = ""
    frames: list[dict[str, int]] = field(default_factory=list)
    gzip_members: int = 0
    skippable: list[dict[str, Any]] = field(default_factory=list)
    chunk_table: dict[str, Any] | None = None
    erofs: dict[str, Any] | None = None
    stream_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "compression": self.compression,
            "blob_size": self.blob_size,
            "decompressed_size": self.decompressed_size,
            "file": {"blob": self.file_blob, "image": self.file_image},
            "frames": self.frames,
            "frame_count": len(self.frames),
            "gzip_members": self.gzip_members,
            "skippable_frames": self.skippable,
            "chunk_table": self.chunk_table,
            "erofs": self.erofs,
            "error": self.stream_error,
        }


def libmagic(data: bytes) -> str:
    """What ``file(1)`` says about ``data`` (via python-magic), or why it cannot say."""
    if not data:
        return "empty"
    try:
        import magic

        return str(magic.from_buffer(data))
    except Exception as exc:  # libmagic missing or broken: inspect still works
        return f"(libmagic unavailable: {exc})"


def _table_dict(table: ChunkTable, offset: int | None, recorder: _Recorder) -> dict[str, Any]:
    return {
        "layout": table.layout,
        "version": table.version,
        "offset": offset,
        "uncompressed_size": table.uncompressed_size,
        "chunk_size": table.chunk_size,
        "chunks": table.count,
        "hash": table.hash_name,
        "digest": table.digest(),
        "verified": recorder.verified,
        "error": recorder.table_error,
    }


def _erofs_dict(head: bytes, total: int) -> dict[str, Any] | None:
    if not superblock.has_magic(head):
        return None
    try:
        sb = superblock.parse(head)
    except DataError as exc:
        return {"valid": False, "error": exc.message}
    try:
        superblock.validate(head)
        problem = None
    except DataError as exc:
        problem = exc.message
    if problem is None and total < sb.image_size:
        problem = f"truncated: {total} of {sb.image_size} bytes"
    built = datetime.fromtimestamp(sb.build_time, UTC).isoformat().replace("+00:00", "Z")
    return {
        "valid": problem is None,
        "error": problem,
        "block_size": sb.block_size,
        "blocks": sb.blocks,
        "image_size": sb.image_size,
        "extra_bytes": max(0, total - sb.image_size),
        "inodes": sb.inodes,
        "uuid": sb.uuid_str,
        "volume_name": sb.volume_label,
        "features": sb.feature_names(),
        "feature_compat": sb.feature_compat,
        "feature_incompat": sb.feature_incompat,
        "build_time": built,
        "checksum": f"0x{sb.checksum:08x}" if sb.has_checksum else None,
    }


def inspect_fd(fd: int, threads: int = 1, max_window_size: int = DEFAULT_MAX_WINDOW) -> Inspection:
    """Describe the blob read from ``fd`` (to its end)."""
    src = Source(fd)
    blob_head = bytes(src.peek(HEAD_KEEP))
    kind = codecs.detect(blob_head)
    result = Inspection(kind.value, file_blob=libmagic(blob_head))
    recorder = _Recorder()
    gzip_stats = GzipStats()
    chunks: Iterator[bytes]
    if kind is Compression.ZSTD:
        if threads > 1:
            from stream_processor.parallel_zstd import decode_zstd_parallel

            chunks = decode_zstd_parallel(
                src, threads=threads, max_window_size=max_window_size, observer=recorder
            )
        else:
            chunks = codecs.decoder(
                kind,
                src,
                max_window_size=max_window_size,
                observer=recorder,
                zstd_stats=ZstdStats(),
            )
    elif kind is Compression.GZIP:
        chunks = decode_gzip(src, gzip_stats)
    else:
        chunks = codecs.copy_raw(src)
    head = bytearray()
    total = 0
    try:
        for chunk in chunks:
            if len(head) < HEAD_KEEP:
                head += chunk[: HEAD_KEEP - len(head)]
            total += len(chunk)
    except DataError as exc:
        result.stream_error = exc.message
    result.blob_size = src.position + src.skip(1 << 62)
    result.decompressed_size = total
    result.gzip_members = gzip_stats.members
    result.frames = [
        {
            "offset": f.offset,
            "compressed_size": f.end_offset - f.offset if f.end_offset >= 0 else -1,
            "decompressed_size": f.decompressed_size,
        }
        for f in recorder.frames()
    ]
    result.skippable = [{"offset": o, "size": s, "content": w} for o, s, w in recorder.skipped]
    if recorder.table is not None:
        result.chunk_table = _table_dict(recorder.table, recorder.table_offset, recorder)
        result.skippable.append(
            {
                "offset": recorder.table_offset,
                "size": len(recorder.table.raw),
                "content": "chunk table",
            }
        )
        result.skippable.sort(key=lambda s: int(s["offset"] or 0))
    image_head = bytes(head)
    result.file_image = libmagic(image_head) if kind is not Compression.NONE else result.file_blob
    result.erofs = _erofs_dict(image_head, total)
    return result


def inspect_path(path: str, threads: int = 1) -> Inspection:
    """``inspect_fd`` on a file, or on stdin for ``-``."""
    if path == "-":
        return inspect_fd(0, threads)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return inspect_fd(fd, threads)
    finally:
        os.close(fd)


def _size_range(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}..{max(values)} (avg {sum(values) // len(values)})"


def format_table(result: Inspection) -> str:
    """The human-readable report: aligned ``key  value`` lines, sections by indent."""
    rows: list[tuple[str, str]] = [
        ("compression", result.compression),
        ("blob size", str(result.blob_size)),
        ("decompressed size", str(result.decompressed_size)),
        ("file(1) of blob", result.file_blob),
    ]
    if result.compression != Compression.NONE.value:
        rows.append(("file(1) of image", result.file_image))
    if result.compression == Compression.ZSTD.value:
        frames = result.frames
        rows.append(("zstd frames", str(len(frames))))
        rows.append(("  compressed", _size_range([f["compressed_size"] for f in frames])))
        rows.append(("  decompressed", _size_range([f["decompressed_size"] for f in frames])))
        if len(frames) <= FRAMES_SHOWN:
            for i, f in enumerate(frames):
                rows.append(
                    (
                        f"  frame {i}",
                        f"offset {f['offset']}, {f['compressed_size']} -> "
                        f"{f['decompressed_size']} bytes",
                    )
                )
        for s in result.skippable:
            rows.append(
                ("skippable frame", f"offset {s['offset']}, {s['size']} bytes: {s['content']}")
            )
    if result.compression == Compression.GZIP.value:
        rows.append(("gzip members", str(result.gzip_members)))
    table = result.chunk_table
    if table is not None:
        status = "yes" if table["verified"] else f"NO: {table['error']}"
        rows += [
            ("chunk table", f"{table['layout']} v{table['version']} at offset {table['offset']}"),
            ("  chunks", f"{table['chunks']} of {table['chunk_size']} bytes"),
            ("  uncompressed size", str(table["uncompressed_size"])),
            ("  hash", table["hash"]),
            ("  digest", table["digest"]),
            ("  verifies", status),
        ]
    elif result.compression == Compression.ZSTD.value:
        rows.append(("chunk table", "none"))
    sb = result.erofs
    if sb is None:
        rows.append(("EROFS", "no EROFS superblock in the decompressed data"))
    elif "block_size" not in sb:
        rows.append(("EROFS", f"invalid: {sb['error']}"))
    else:
        rows += [
            ("EROFS", "valid" if sb["valid"] else f"INVALID: {sb['error']}"),
            ("  block size", str(sb["block_size"])),
            ("  blocks", str(sb["blocks"])),
            ("  image size", str(sb["image_size"])),
            ("  inodes", str(sb["inodes"])),
            ("  uuid", sb["uuid"]),
            ("  volume name", sb["volume_name"] or "(none)"),
            ("  features", ", ".join(sb["features"]) or "(none)"),
            ("  build time", sb["build_time"]),
        ]
        if sb["extra_bytes"]:
            rows.append(("  extra bytes", str(sb["extra_bytes"])))
    if result.stream_error:
        rows.append(("error", result.stream_error))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
