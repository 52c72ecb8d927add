"""Describing a layer blob: framing, chunk table, dm-verity data, EROFS superblock, file(1).

``inspect`` decodes the blob as decode does (``decode.decompress``, every check
on) and runs the decoder's own gate over the output, so "verifies" and "would
decode" mean what the decode path accepts. The output is kept only as far as a
report needs it: its first ``HEAD_KEEP`` bytes, its SHA-256 (the diff_id) and,
for a dm-verity frame, a spool to recompute the tree. Table and dm-verity
mismatches are recorded rather than raised, so a damaged blob is described up
to the damage, then the error.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from stream_processor import codecs, mediatypes, seekable, superblock
from stream_processor.decode import DecodeOptions, DecodeResult, decompress, expected_payload
from stream_processor.errors import DataError
from stream_processor.framing import DEFAULT_MAX_WINDOW
from stream_processor.mediatypes import Compression
from stream_processor.seekable import ChunkTableVerifier
from stream_processor.sink import HoldbackSink
from stream_processor.source import Source
from stream_processor.validator import ImageGate, Kind, libmagic

HEAD_KEEP = 64 * 1024  # the largest EROFS block: enough for any superblock and for libmagic
FRAMES_SHOWN = 16  # the human table lists frames one by one up to this many


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


# The report's parts. Their fields are the ``--json`` keys, in order (``asdict``).


@dataclass
class Frame:
    """A zstd data frame; sizes are None unless it decoded whole."""

    offset: int
    complete: bool
    compressed_size: int | None
    decompressed_size: int | None


@dataclass
class Skippable:
    """A skippable frame and what it holds (``seekable.describe_skippable``)."""

    offset: int
    size: int
    content: str


@dataclass
class ChunkTableReport:
    layout: str
    version: int
    offset: int | None
    uncompressed_size: int
    chunk_size: int
    chunks: int
    hash: str
    digest: str  # the chunk_digest annotation's value
    verified: bool
    error: str | None  # the mismatch, if the stream decoded far enough to check


@dataclass
class VerityReport:
    offset: int | None
    size: int
    version: int
    hash_type: int
    hash: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: str  # hex
    uuid: str
    root_digest: str | None  # only when the tree was recomputed and matched
    verified: bool
    error: str | None


@dataclass
class UnreadableErofs:
    """EROFS magic, but a superblock that does not parse."""

    valid: bool
    error: str


@dataclass
class ErofsReport:
    """The EROFS superblock at the start of the decompressed data, and how much followed."""

    valid: bool  # the superblock checks and the whole image decoded
    superblock_valid: bool
    complete: bool
    error: str | None
    block_size: int
    blocks: int
    image_size: int
    decoded_bytes: int
    extra_bytes: int
    inodes: int
    uuid: str
    uuid_file_order: str
    volume_name: str
    features: list[str]
    feature_compat: int
    feature_incompat: int
    build_time: str
    checksum: str | None


@dataclass
class DescriptorCheck:
    """One descriptor field checked against the blob."""

    field: str
    expected: Any  # as the descriptor has it (JSON)
    found: Any
    ok: bool
    problem: str


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
    frames: list[Frame] = field(default_factory=list)
    gzip_members: int = 0
    skippable: list[Skippable] = field(default_factory=list)
    chunk_table: ChunkTableReport | None = None
    dm_verity: VerityReport | None = None
    erofs: ErofsReport | UnreadableErofs | None = None
    descriptor: list[DescriptorCheck] | None = None
    stream_error: str | None = None
    table_raw: bytes = field(default=b"", repr=False)  # the chunk table payload, for digests

    def problems(self) -> list[str]:
        """Why the blob would not decode (or does not match its descriptor), first first."""
        found = [self.stream_error] if self.stream_error else []
        if self.chunk_table is not None and self.chunk_table.error:
            found.append(self.chunk_table.error)
        if self.dm_verity is not None and self.dm_verity.error:
            found.append(self.dm_verity.error)
        if self.payload != Kind.TAR.value and not self.stream_error:
            if self.erofs is None:
                found.append("no EROFS image in the decompressed data")
            elif not self.erofs.valid:
                found.append(str(self.erofs.error))
        for check in self.descriptor or []:
            if not check.ok:
                found.append(check.problem)
        return found

    def as_dict(self) -> dict[str, Any]:
        problems = self.problems()

        def optional(part: Any) -> dict[str, Any] | None:
            return asdict(part) if part is not None else None

        return {
            "compression": self.compression,
            "media_type": self.media_type,
            "payload": self.payload,
            "blob_size": self.blob_size,
            "blob_digest": self.blob_digest,
            "decompressed_size": self.decompressed_size,
            "diff_id": self.diff_id,
            "file": {"blob": self.file_blob, "image": self.file_image},
            "frames": [asdict(f) for f in self.frames],
            "frame_count": len(self.frames),
            "gzip_members": self.gzip_members,
            "skippable_frames": [asdict(s) for s in self.skippable],
            "chunk_table": optional(self.chunk_table),
            "dm_verity": optional(self.dm_verity),
            "erofs": optional(self.erofs),
            "descriptor": (
                None if self.descriptor is None else [asdict(c) for c in self.descriptor]
            ),
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


def _file_order(uuid: str) -> str:
    """The UUID as file(1) prints it: first three fields byte-swapped, upper case."""
    raw = bytes.fromhex(uuid.replace("-", ""))
    swapped = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]
    h = swapped.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _erofs(head: bytes, total: int, complete: bool) -> ErofsReport | UnreadableErofs | None:
    if not superblock.has_magic(head):
        return None
    try:
        sb = superblock.parse(head)
    except DataError as exc:
        return UnreadableErofs(valid=False, error=exc.message)
    try:
        superblock.validate(head)
        problem = None
    except DataError as exc:
        problem = exc.message
    if problem is None and complete and total < sb.image_size:
        problem = f"truncated: {total} of {sb.image_size} bytes"
    built = datetime.fromtimestamp(sb.build_time, UTC).isoformat().replace("+00:00", "Z")
    return ErofsReport(
        valid=problem is None and complete,
        superblock_valid=problem is None,
        complete=complete and total >= sb.image_size,
        error=problem,
        block_size=sb.block_size,
        blocks=sb.blocks,
        image_size=sb.image_size,
        decoded_bytes=total,
        extra_bytes=max(0, total - sb.image_size),
        inodes=sb.inodes,
        uuid=sb.uuid_str,
        uuid_file_order=_file_order(sb.uuid_str),
        volume_name=sb.volume_label,
        features=sb.feature_names(),
        feature_compat=sb.feature_compat,
        feature_incompat=sb.feature_incompat,
        build_time=built,
        checksum=f"0x{sb.checksum:08x}" if sb.has_checksum else None,
    )


def _framing(result: Inspection, verifier: ChunkTableVerifier) -> None:
    """Fill in what the chunk-table verifier saw: frames, skippable frames, table, dm-verity."""
    for f in verifier.frames():
        complete = f.end_offset >= 0
        result.frames.append(
            Frame(
                offset=f.offset,
                complete=complete,
                compressed_size=f.end_offset - f.offset if complete else None,
                decompressed_size=f.decompressed_size if complete else None,
            )
        )
    result.skippable = [Skippable(o, s, what) for o, s, what in verifier.skipped]
    table = verifier.table
    if table is not None:
        result.chunk_table = ChunkTableReport(
            layout=table.layout,
            version=table.version,
            offset=verifier.table_offset,
            uncompressed_size=table.uncompressed_size,
            chunk_size=table.chunk_size,
            chunks=table.count,
            hash=table.hash_name,
            digest=table.digest(),
            verified=verifier.verified,
            error=verifier.table_error,
        )
        result.table_raw = table.raw
        assert verifier.table_offset is not None
        result.skippable.append(Skippable(verifier.table_offset, len(table.raw), "chunk table"))
        result.skippable.sort(key=lambda s: s.offset)
    sb = verifier.verity
    if sb is not None:
        result.dm_verity = VerityReport(
            offset=verifier.verity_offset,
            size=verifier.verity_size,
            version=sb.version,
            hash_type=sb.hash_type,
            hash=sb.hash_name,
            data_block_size=sb.data_block_size,
            hash_block_size=sb.hash_block_size,
            data_blocks=sb.data_blocks,
            salt=sb.salt.hex(),
            uuid=sb.uuid_str,
            root_digest=verifier.verity_root,
            verified=verifier.verity_root is not None,
            error=verifier.verity_error,
        )


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
    options = DecodeOptions(
        media_type,
        max_window_size=max_window_size,
        threads=threads,
        verify_dm_verity=True,  # the tree is always recomputed
        verify_frame_hashes=True,
    )
    decoding = DecodeResult(media_type)
    decoding.compression = kind
    gate = ImageGate(cast(HoldbackSink, _Discard()), expected_payload(route, kind))
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
        for chunk in decompress(src, decoding, options, keep_errors=True):
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
        if decoding.verifier is not None:
            decoding.verifier.close()
    result.blob_size = src.position + src.skip(1 << 62)
    result.blob_digest = "sha256:" + src.sha256.hexdigest()
    result.gzip_members = decoding.gzip.members
    if decoding.verifier is not None:
        _framing(result, decoding.verifier)
    image_head = bytes(head)
    result.file_image = file_type(image_head) if kind is not Compression.NONE else result.file_blob
    if result.payload != Kind.TAR.value:
        total = result.decompressed_size
        result.erofs = _erofs(image_head, total, complete=result.stream_error is None)
    return result


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


def check_descriptor(result: Inspection, desc: dict[str, Any]) -> list[DescriptorCheck]:
    """Compare a layer descriptor (digest, size, annotations) with what the blob holds.

    Annotations the blob gives no way to check are not rows.
    """
    rows: list[DescriptorCheck] = []

    def row(name: str, expected: object, found: object, ok: bool, problem: str = "") -> None:
        problem = problem or f"descriptor {name} is {expected}, the blob has {found}"
        rows.append(DescriptorCheck(name, expected, found, ok, problem))

    if "digest" in desc:
        row("digest", desc["digest"], result.blob_digest, desc["digest"] == result.blob_digest)
    if "size" in desc:
        row("size", desc["size"], result.blob_size, desc["size"] == result.blob_size)
    notes = desc.get("annotations") or {}
    table = result.chunk_table
    verity = result.dm_verity
    sections: tuple[tuple[str, ChunkTableReport | VerityReport | None], ...] = (
        (seekable.ANNOTATION_TABLE_OFFSET, table),
        (seekable.ANNOTATION_VERITY_OFFSET, verity),
    )
    for key, section in sections:
        if key in notes:
            at = section.offset if section else None
            row(key, notes[key], at, str(at) == str(notes[key]))
    if seekable.ANNOTATION_TABLE_DIGEST in notes:
        want = notes[seekable.ANNOTATION_TABLE_DIGEST]
        if table is None:
            row(seekable.ANNOTATION_TABLE_DIGEST, want, None, False, "the blob has no chunk table")
        else:
            try:
                form = seekable.check_table_digest(result.table_raw, str(want))
                older = ", the older form" if form == "sha256" else ""
                row(seekable.ANNOTATION_TABLE_DIGEST, want, f"matches ({form}{older})", True)
            except DataError as exc:
                row(seekable.ANNOTATION_TABLE_DIGEST, want, table.digest, False, exc.message)
    if seekable.ANNOTATION_VERITY_ROOT in notes:
        want = notes[seekable.ANNOTATION_VERITY_ROOT]
        root = verity.root_digest if verity else None
        ok = root is not None and root == want
        problem = (
            "the blob has no dm-verity frame"
            if verity is None
            else "the dm-verity tree does not verify, so no root digest"
            if root is None
            else f"dm-verity root digest annotation is {want}, the tree's root is {root}"
        )
        row(seekable.ANNOTATION_VERITY_ROOT, want, root, ok, problem)
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
        status = "ok" if check.ok else f"MISMATCH: {check.problem}"
        rows.append((f"descriptor {check.field}", status))
    problems = result.problems()
    if problems:
        rows.append(("error", problems[0]))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)


def _frame_rows(result: Inspection) -> list[tuple[str, str]]:
    frames = result.frames
    done = [f for f in frames if f.complete]
    rows = [
        (
            "zstd frames",
            str(len(frames)) + ("" if len(done) == len(frames) else f" ({len(done)} whole)"),
        ),
        ("  compressed", _size_range([f.compressed_size or 0 for f in done])),
        ("  decompressed", _size_range([f.decompressed_size or 0 for f in done])),
    ]
    if len(frames) <= FRAMES_SHOWN:
        broken = False
        for i, f in enumerate(frames):
            if f.complete:
                what = f"{f.compressed_size} -> {f.decompressed_size} bytes"
            else:
                what = "not decoded (after the damage)" if broken else "damaged (see error)"
                broken = True
            rows.append((f"  frame {i}", f"offset {f.offset}, {what}"))
    for s in result.skippable:
        rows.append(("skippable frame", f"offset {s.offset}, {s.size} bytes: {s.content}"))
    return rows


def _table_rows(result: Inspection) -> list[tuple[str, str]]:
    table = result.chunk_table
    if table is None:
        if result.compression != Compression.ZSTD.value:
            return []
        if result.stream_error:
            return [("chunk table", "not reached: the stream is damaged before any table")]
        return [("chunk table", "none")]
    status = "yes" if table.verified else f"NO: {table.error}"
    if table.error is None and not table.verified:
        status = "not checked: the stream is damaged"
    return [
        ("chunk table", f"{table.layout} v{table.version} at offset {table.offset}"),
        ("  chunks", f"{table.chunks} of {table.chunk_size} bytes"),
        ("  uncompressed size", str(table.uncompressed_size)),
        ("  hash", table.hash),
        ("  digest", table.digest),
        ("  verifies", status),
    ]


def _verity_rows(result: Inspection) -> list[tuple[str, str]]:
    v = result.dm_verity
    if v is None:
        return []
    if v.verified:
        status = "yes (tree recomputed over the image)"
    elif v.error:
        status = f"NO: {v.error}"
    else:
        status = "not checked: the stream is damaged"
    return [
        ("dm-verity", f"at offset {v.offset}, {v.size} bytes, hash type {v.hash_type}"),
        ("  hash", v.hash),
        ("  block sizes", f"data {v.data_block_size}, hash {v.hash_block_size}"),
        ("  data blocks", str(v.data_blocks)),
        ("  salt", v.salt or "(none: salt size 0, containerd's default)"),
        ("  uuid", v.uuid),
        ("  root digest", v.root_digest or "(unknown: the tree did not verify)"),
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
    if isinstance(sb, UnreadableErofs):
        return [("EROFS", f"invalid: {sb.error}")]
    if sb.valid:
        status = "valid"
    elif sb.superblock_valid:
        status = (
            f"superblock valid; {sb.decoded_bytes} of {sb.image_size} bytes decoded "
            "before the damage"
        )
    else:
        status = f"INVALID: {sb.error}"
    rows = [
        ("EROFS", status),
        ("  block size", str(sb.block_size)),
        ("  blocks", str(sb.blocks)),
        ("  image size", str(sb.image_size)),
        ("  inodes", str(sb.inodes)),
        ("  uuid", f"{sb.uuid} (as blkid and mkfs.erofs -U print it)"),
        ("  uuid, file(1) order", f"{sb.uuid_file_order} (first three fields byte-swapped)"),
        ("  volume name", sb.volume_name or "(none)"),
        ("  features", ", ".join(sb.features) or "(none)"),
        ("  build time", sb.build_time),
    ]
    if sb.extra_bytes:
        rows.append(("  extra bytes", str(sb.extra_bytes)))
    return rows
