"""Describing a layer blob: framing, chunk table, dm-verity data, EROFS superblock, file(1).

``inspect`` runs the real decoder over the blob and the decoder's own gate
(``validator.ImageGate``) over the output, so "verifies" and "would decode"
mean exactly what the decode path accepts; the output is thrown away except
for the first ``HEAD_KEEP`` bytes (superblock, libmagic), its SHA-256 (the
diff_id) and, for a dm-verity frame, an unlinked spool of the image so the
tree is always recomputed. The chunk-table verifier is the frame recorder;
its verdicts are recorded instead of raised, so a damaged blob is described
up to the damage, then the error.

Given the layer's descriptor (``--descriptor`` or ``--annotations``),
``check_descriptor`` compares every annotation and the digest and size with
what the blob holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from stream_processor import codecs, mediatypes, seekable, superblock
from stream_processor.dmverity import ImageSpool
from stream_processor.errors import DataError
from stream_processor.framing import DEFAULT_MAX_WINDOW, ZstdStats
from stream_processor.gzip_codec import GzipStats, decode_gzip
from stream_processor.mediatypes import Compression, Payload
from stream_processor.seekable import ChunkTable, ChunkTableVerifier
from stream_processor.sink import HoldbackSink
from stream_processor.source import Source
from stream_processor.validator import ImageGate, Kind, libmagic

HEAD_KEEP = 64 * 1024  # the largest EROFS block: enough for any superblock and for libmagic
FRAMES_SHOWN = 16  # the human table lists frames one by one up to this many


class _Recorder(ChunkTableVerifier):
    """The verifier, but a table or dm-verity mismatch is noted rather than raised."""

    def __init__(self, spool: ImageSpool) -> None:
        super().__init__(spool=spool)
        self.table_error: str | None = None
        self.verity_error: str | None = None
        self.total_out = 0
        self.finished = False

    def finish(self, total_out: int, end_offset: int) -> None:
        self.total_out = total_out
        self.finished = True
        if self.table is not None:
            try:
                self._verify(self.table, total_out)
                self.verified = True
            except DataError as exc:
                self.table_error = exc.message
        if self.verity is not None:
            try:
                self._check_verity(self.verity, total_out)
            except DataError as exc:
                self.verity_error = exc.message


class _HashingSource(Source):
    """A ``Source`` that also hashes every byte it reads: the blob's digest."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.sha256 = hashlib.sha256()

    def _fill(self, want: int) -> None:
        before = self.bytes_read
        super()._fill(want)
        new = self.bytes_read - before
        if new:  # newly read bytes always end the buffer, whatever was compacted
            self.sha256.update(self._view[self._end - new : self._end])


class _Discard:
    """Where the gate's output goes: nowhere (``inspect`` keeps only hashes and the head)."""

    def write(self, data: bytes | memoryview) -> None:
        pass


@dataclass
class Inspection:
    """Everything ``inspect`` reports; ``as_dict`` is the ``--json`` form."""

    compression: str
    media_type: str | None = None
    payload: str | None = None  # "erofs" or "tar": what the decompressed data is
    blob_size: int = 0
    blob_digest: str = ""
    decompressed_size: int = 0
    diff_id: str | None = None  # only when the whole stream decoded without error
    file_blob: str = ""
    file_image: str = ""
    frames: list[dict[str, Any]] = field(default_factory=list)
    gzip_members: int = 0
    skippable: list[dict[str, Any]] = field(default_factory=list)
    chunk_table: dict[str, Any] | None = None
    dm_verity: dict[str, Any] | None = None
    erofs: dict[str, Any] | None = None
    descriptor: list[dict[str, Any]] | None = None  # one row per checked field
    stream_error: str | None = None
    table_raw: bytes = field(default=b"", repr=False)  # the chunk table payload, for digests

    def problems(self) -> list[str]:
        """Why the blob would not decode (or does not match its descriptor), first first."""
        found = [self.stream_error] if self.stream_error else []
        if self.chunk_table is not None and self.chunk_table["error"]:
            found.append(self.chunk_table["error"])
        if self.dm_verity is not None and self.dm_verity["error"]:
            found.append(self.dm_verity["error"])
        if self.payload != Kind.TAR.value and not self.stream_error:
            if self.erofs is None:
                found.append("no EROFS image in the decompressed data")
            elif not self.erofs["valid"]:
                found.append(str(self.erofs["error"]))
        for row in self.descriptor or []:
            if not row["ok"]:
                found.append(row["problem"])
        return found

    def as_dict(self) -> dict[str, Any]:
        problems = self.problems()
        return {
            "compression": self.compression,
            "media_type": self.media_type,
            "payload": self.payload,
            "blob_size": self.blob_size,
            "blob_digest": self.blob_digest,
            "decompressed_size": self.decompressed_size,
            "diff_id": self.diff_id,
            "file": {"blob": self.file_blob, "image": self.file_image},
            "frames": self.frames,
            "frame_count": len(self.frames),
            "gzip_members": self.gzip_members,
            "skippable_frames": self.skippable,
            "chunk_table": self.chunk_table,
            "dm_verity": self.dm_verity,
            "erofs": self.erofs,
            "descriptor": self.descriptor,
            "error": problems[0] if problems else None,
            "errors": problems,
        }


def file_type(data: bytes) -> str:
    """What ``file(1)`` says about ``data`` (``validator.libmagic``), or why it cannot say."""
    if not data:
        return "empty"
    try:
        return libmagic(data)
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


def _verity_dict(recorder: _Recorder) -> dict[str, Any] | None:
    sb = recorder.verity
    if sb is None:
        return None
    return {
        "offset": recorder.verity_offset,
        "size": recorder.verity_size,
        "version": sb.version,
        "hash_type": sb.hash_type,
        "hash": sb.hash_name,
        "data_block_size": sb.data_block_size,
        "hash_block_size": sb.hash_block_size,
        "data_blocks": sb.data_blocks,
        "salt": sb.salt.hex(),
        "uuid": sb.uuid_str,
        "root_digest": recorder.verity_root,
        "verified": recorder.verity_root is not None,
        "error": recorder.verity_error,
    }


def _file_order(uuid: str) -> str:
    """The UUID as file(1) prints it: first three fields byte-swapped, upper case."""
    raw = bytes.fromhex(uuid.replace("-", ""))
    swapped = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]
    h = swapped.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _erofs_dict(head: bytes, total: int, complete: bool) -> dict[str, Any] | None:
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
    if problem is None and complete and total < sb.image_size:
        problem = f"truncated: {total} of {sb.image_size} bytes"
    built = datetime.fromtimestamp(sb.build_time, UTC).isoformat().replace("+00:00", "Z")
    return {
        "valid": problem is None and complete,
        "superblock_valid": problem is None,
        "complete": complete and total >= sb.image_size,
        "error": problem,
        "block_size": sb.block_size,
        "blocks": sb.blocks,
        "image_size": sb.image_size,
        "decoded_bytes": total,
        "extra_bytes": max(0, total - sb.image_size),
        "inodes": sb.inodes,
        "uuid": sb.uuid_str,
        "uuid_file_order": _file_order(sb.uuid_str),
        "volume_name": sb.volume_label,
        "features": sb.feature_names(),
        "feature_compat": sb.feature_compat,
        "feature_incompat": sb.feature_incompat,
        "build_time": built,
        "checksum": f"0x{sb.checksum:08x}" if sb.has_checksum else None,
    }


def _frames(recorder: _Recorder) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in recorder.frames():
        complete = f.end_offset >= 0
        out.append(
            {
                "offset": f.offset,
                "complete": complete,
                "compressed_size": f.end_offset - f.offset if complete else None,
                "decompressed_size": f.decompressed_size if complete else None,
            }
        )
    return out


def inspect_fd(
    fd: int,
    threads: int = 1,
    max_window_size: int = DEFAULT_MAX_WINDOW,
    media_type: str | None = None,
) -> Inspection:
    """Describe the blob read from ``fd`` (to its end); ``media_type`` picks the route."""
    route = mediatypes.resolve(media_type)
    src = _HashingSource(fd)
    blob_head = bytes(src.peek(HEAD_KEEP))
    kind = codecs.detect(blob_head)
    result = Inspection(kind.value, media_type=media_type, file_blob=file_type(blob_head))
    spool = ImageSpool()
    recorder = _Recorder(spool)
    gzip_stats = GzipStats()
    payload = route.payload
    if route.compression is None and kind is Compression.NONE:
        payload = Payload.EROFS
    gate = ImageGate(cast(HoldbackSink, _Discard()), payload)
    diff = hashlib.sha256()
    head = bytearray()
    try:
        if not blob_head:
            raise DataError("input is empty")
        if route.compression is not None and route.compression is not kind:
            raise DataError(
                f"media type {route.media_type} says {route.compression.value}, "
                f"but the data is {kind.value}"
            )
        chunks: Iterator[bytes]
        if kind is Compression.ZSTD:
            chunks = spool.tee(_zstd(src, threads, max_window_size, recorder))
        elif kind is Compression.GZIP:
            chunks = decode_gzip(src, gzip_stats)
        else:
            chunks = codecs.copy_raw(src)
        for chunk in chunks:
            if len(head) < HEAD_KEEP:
                head += chunk[: HEAD_KEEP - len(head)]
            diff.update(chunk)
            result.decompressed_size += len(chunk)
            gate.feed(chunk)
        verdict = gate.finish()
        result.payload = verdict.kind.value
        result.diff_id = "sha256:" + diff.hexdigest()
    except DataError as exc:
        result.stream_error = exc.message
    finally:
        spool.close()
    result.blob_size = src.position + src.skip(1 << 62)
    result.blob_digest = "sha256:" + src.sha256.hexdigest()
    result.gzip_members = gzip_stats.members
    result.frames = _frames(recorder)
    result.skippable = [{"offset": o, "size": s, "content": w} for o, s, w in recorder.skipped]
    if recorder.table is not None:
        result.chunk_table = _table_dict(recorder.table, recorder.table_offset, recorder)
        result.table_raw = recorder.table.raw
        result.skippable.append(
            {
                "offset": recorder.table_offset,
                "size": len(recorder.table.raw),
                "content": "chunk table",
            }
        )
        result.skippable.sort(key=lambda s: int(s["offset"] or 0))
    result.dm_verity = _verity_dict(recorder)
    image_head = bytes(head)
    result.file_image = file_type(image_head) if kind is not Compression.NONE else result.file_blob
    if result.payload != Kind.TAR.value:
        total = result.decompressed_size
        result.erofs = _erofs_dict(image_head, total, complete=result.stream_error is None)
    return result


def _zstd(src: Source, threads: int, max_window_size: int, recorder: _Recorder) -> Iterator[bytes]:
    if threads > 1:
        from stream_processor.zstd_parallel import decode_zstd_parallel

        return decode_zstd_parallel(
            src, threads=threads, max_window_size=max_window_size, observer=recorder
        )
    return codecs.decoder(
        Compression.ZSTD,
        src,
        max_window_size=max_window_size,
        observer=recorder,
        zstd_stats=ZstdStats(),
    )


def inspect_path(path: str, threads: int = 1, media_type: str | None = None) -> Inspection:
    """``inspect_fd`` on a file, or on stdin for ``-``."""
    if path == "-":
        return inspect_fd(0, threads, media_type=media_type)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return inspect_fd(fd, threads, media_type=media_type)
    finally:
        os.close(fd)


# -- the layer's descriptor ------------------------------------------------------------


def check_descriptor(result: Inspection, desc: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare a layer descriptor (digest, size, annotations) with what the blob holds.

    Each row: ``field``, ``expected`` (the descriptor's), ``found`` (the blob's),
    ``ok`` and ``problem``. Annotations the blob gives no way to check are not rows.
    """
    rows: list[dict[str, Any]] = []

    def row(name: str, expected: object, found: object, ok: bool, problem: str = "") -> None:
        rows.append(
            {
                "field": name,
                "expected": expected,
                "found": found,
                "ok": ok,
                "problem": problem or f"descriptor {name} is {expected}, the blob has {found}",
            }
        )

    if "digest" in desc:
        row("digest", desc["digest"], result.blob_digest, desc["digest"] == result.blob_digest)
    if "size" in desc:
        row("size", desc["size"], result.blob_size, desc["size"] == result.blob_size)
    notes = desc.get("annotations") or {}
    table = result.chunk_table
    verity = result.dm_verity
    for key, section in (
        (seekable.ANNOTATION_TABLE_OFFSET, table),
        (seekable.ANNOTATION_VERITY_OFFSET, verity),
    ):
        if key in notes:
            found = section["offset"] if section else None
            row(key, notes[key], found, str(found) == str(notes[key]))
    if seekable.ANNOTATION_TABLE_DIGEST in notes:
        want = notes[seekable.ANNOTATION_TABLE_DIGEST]
        if table is None:
            row(seekable.ANNOTATION_TABLE_DIGEST, want, None, False, "the blob has no chunk table")
        else:
            try:
                form = seekable.check_table_digest(result.table_raw, str(want))
                found = f"matches ({form}" + (", the older form" if form == "sha256" else "") + ")"
                row(seekable.ANNOTATION_TABLE_DIGEST, want, found, True)
            except DataError as exc:
                row(seekable.ANNOTATION_TABLE_DIGEST, want, table["digest"], False, exc.message)
    if seekable.ANNOTATION_VERITY_ROOT in notes:
        want = notes[seekable.ANNOTATION_VERITY_ROOT]
        found = verity["root_digest"] if verity else None
        ok = found is not None and found == want
        problem = (
            "the blob has no dm-verity frame"
            if verity is None
            else "the dm-verity tree does not verify, so no root digest"
            if found is None
            else f"dm-verity root digest annotation is {want}, the tree's root is {found}"
        )
        row(seekable.ANNOTATION_VERITY_ROOT, want, found, ok, problem)
    return rows


# -- the human table -------------------------------------------------------------------


def _size_range(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}..{max(values)} (avg {sum(values) // len(values)})"


def format_table(result: Inspection) -> str:
    """The human-readable report: aligned ``key  value`` lines, sections by indent."""
    rows: list[tuple[str, str]] = [("compression", result.compression)]
    if result.media_type:
        rows.append(("media type", result.media_type))
    rows += [
        ("blob size", str(result.blob_size)),
        ("blob digest", result.blob_digest),
        ("decompressed size", str(result.decompressed_size)),
        ("diff id", result.diff_id or "(none: the stream did not decode without error)"),
        ("file(1) of blob", result.file_blob),
    ]
    if result.compression != Compression.NONE.value:
        rows.append(("file(1) of image", result.file_image))
    if result.compression == Compression.ZSTD.value:
        rows += _frame_rows(result)
    if result.compression == Compression.GZIP.value:
        rows.append(("gzip members", str(result.gzip_members)))
    rows += _table_rows(result)
    rows += _verity_rows(result)
    rows += _erofs_rows(result)
    for check in result.descriptor or []:
        status = "ok" if check["ok"] else f"MISMATCH: {check['problem']}"
        rows.append((f"descriptor {check['field']}", status))
    problems = result.problems()
    if problems:
        rows.append(("error", problems[0]))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)


def _frame_rows(result: Inspection) -> list[tuple[str, str]]:
    frames = result.frames
    done = [f for f in frames if f["complete"]]
    rows = [
        (
            "zstd frames",
            str(len(frames)) + ("" if len(done) == len(frames) else f" ({len(done)} whole)"),
        ),
        ("  compressed", _size_range([f["compressed_size"] for f in done])),
        ("  decompressed", _size_range([f["decompressed_size"] for f in done])),
    ]
    if len(frames) <= FRAMES_SHOWN:
        broken = False
        for i, f in enumerate(frames):
            if f["complete"]:
                what = f"{f['compressed_size']} -> {f['decompressed_size']} bytes"
            else:
                what = "not decoded (after the damage)" if broken else "damaged (see error)"
                broken = True
            rows.append((f"  frame {i}", f"offset {f['offset']}, {what}"))
    for s in result.skippable:
        rows.append(("skippable frame", f"offset {s['offset']}, {s['size']} bytes: {s['content']}"))
    return rows


def _table_rows(result: Inspection) -> list[tuple[str, str]]:
    table = result.chunk_table
    if table is None:
        if result.compression != Compression.ZSTD.value:
            return []
        if result.stream_error:
            return [("chunk table", "not reached: the stream is damaged before any table")]
        return [("chunk table", "none")]
    status = "yes" if table["verified"] else f"NO: {table['error']}"
    if table["error"] is None and not table["verified"]:
        status = "not checked: the stream is damaged"
    return [
        ("chunk table", f"{table['layout']} v{table['version']} at offset {table['offset']}"),
        ("  chunks", f"{table['chunks']} of {table['chunk_size']} bytes"),
        ("  uncompressed size", str(table["uncompressed_size"])),
        ("  hash", table["hash"]),
        ("  digest", table["digest"]),
        ("  verifies", status),
    ]


def _verity_rows(result: Inspection) -> list[tuple[str, str]]:
    v = result.dm_verity
    if v is None:
        return []
    if v["verified"]:
        status = "yes (tree recomputed over the image)"
    elif v["error"]:
        status = f"NO: {v['error']}"
    else:
        status = "not checked: the stream is damaged"
    return [
        ("dm-verity", f"at offset {v['offset']}, {v['size']} bytes, hash type {v['hash_type']}"),
        ("  hash", v["hash"]),
        ("  block sizes", f"data {v['data_block_size']}, hash {v['hash_block_size']}"),
        ("  data blocks", str(v["data_blocks"])),
        ("  salt", v["salt"] or "(none: salt size 0, containerd's default)"),
        ("  uuid", v["uuid"]),
        ("  root digest", v["root_digest"] or "(unknown: the tree did not verify)"),
        ("  verifies", status),
    ]


def _erofs_rows(result: Inspection) -> list[tuple[str, str]]:
    if result.payload == Kind.TAR.value:
        return [("payload", "tar archive (passed through unchanged on this route)")]
    sb = result.erofs
    if sb is None:
        if result.stream_error and result.decompressed_size == 0:
            return []
        return [("EROFS", "no EROFS superblock in the decompressed data")]
    if "block_size" not in sb:
        return [("EROFS", f"invalid: {sb['error']}")]
    if sb["valid"]:
        status = "valid"
    elif sb["superblock_valid"]:
        status = (
            f"superblock valid; {sb['decoded_bytes']} of {sb['image_size']} bytes decoded "
            "before the damage"
        )
    else:
        status = f"INVALID: {sb['error']}"
    rows = [
        ("EROFS", status),
        ("  block size", str(sb["block_size"])),
        ("  blocks", str(sb["blocks"])),
        ("  image size", str(sb["image_size"])),
        ("  inodes", str(sb["inodes"])),
        ("  uuid", f"{sb['uuid']} (as blkid and mkfs.erofs -U print it)"),
        ("  uuid, file(1) order", f"{sb['uuid_file_order']} (first three fields byte-swapped)"),
        ("  volume name", sb["volume_name"] or "(none)"),
        ("  features", ", ".join(sb["features"]) or "(none)"),
        ("  build time", sb["build_time"]),
    ]
    if sb["extra_bytes"]:
        rows.append(("  extra bytes", str(sb["extra_bytes"])))
    return rows
