"""The seekable EROFS layer: the chunk table, and checking a stream against it.

Layout (REFERENCE.md section 5, containerd PR 12764): the raw image is cut
into fixed chunks, each an independent zstd frame; a skippable frame (magic
0x184D2A50) then carries the chunk table. Its payload is a 23-byte
little-endian header (magic 0xCDE4EC67, version 1, uncompressed size u64,
chunk size u32, hash algorithm u8, reserved u16 = 0) followed by one entry
per chunk: the blob offset (u64) of the chunk's frame, then the hash of the
whole compressed frame if the algorithm has one (1 = SHA-512, 64 bytes).

Every table layout is parsed into the same ``ChunkTable`` (a list of
``Chunk`` with compressed offset, uncompressed offset and size, digest), and
``ChunkTableVerifier`` checks only that generic form. A second layout (the
draft erofs-image-spec index) is added by writing a parser for its payload
and registering it in ``LAYOUTS`` under its magic; nothing else changes.

Nothing here trusts a length from the blob before bounding it: the payload
is at most ``zstd_codec.SKIPPABLE_PAYLOAD_LIMIT`` (the decoder refuses more),
the entry count must match both the payload length and the header's sizes,
and the number of frames tracked is capped.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from stream_processor.errors import DataError

SKIPPABLE_TABLE_MAGIC = 0x184D2A50  # the skippable-frame magic the table is written with
TABLE_MAGIC = 0xCDE4EC67
TABLE_MAGIC_BYTES = TABLE_MAGIC.to_bytes(4, "little")
TABLE_VERSION = 1
HEADER = struct.Struct("<IIQIBH")  # magic, version, uncompressed size, chunk size, algo, reserved
HASH_NONE = 0
HASH_SHA512 = 1
HASH_SIZES = {HASH_NONE: 0, HASH_SHA512: 64}
HASH_NAMES = {HASH_NONE: "none", HASH_SHA512: "sha512"}
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 << 20  # = parallel_zstd.MAX_PARALLEL_FRAME: a chunk is decoded whole, in memory
MAX_TRACKED_FRAMES = 1 << 20  # more frames than any table that fits the payload limit holds

ANNOTATION_TABLE_OFFSET = "dev.containerd.erofs.zstd.chunk_table_offset"
ANNOTATION_TABLE_DIGEST = "dev.containerd.erofs.zstd.chunk_digest"
ANNOTATION_VERITY_OFFSET = "dev.containerd.erofs.dmverity.offset"
ANNOTATION_VERITY_ROOT = "dev.containerd.erofs.dmverity.root_digest"

VERITY_SIGNATURE = b"verity\0\0"  # first bytes of a dm-verity superblock


@dataclass(frozen=True)
class Chunk:
    """One chunk as a table describes it, whatever the table's layout."""

    index: int
    compressed_offset: int  # blob offset of the chunk's zstd frame
    uncompressed_offset: int
    uncompressed_size: int
    digest: bytes | None  # hash of the whole compressed frame, if the table has one


@dataclass(frozen=True)
class ChunkTable:
    """A parsed chunk table, in the layout-independent form the verifier checks."""

    layout: str
    version: int
    uncompressed_size: int
    chunk_size: int
    hash_algo: int
    chunks: tuple[Chunk, ...]
    raw: bytes = field(repr=False)  # the payload: header + entries, as stored

    @property
    def hash_name(self) -> str:
        return HASH_NAMES.get(self.hash_algo, str(self.hash_algo))

    def digest(self) -> str:
        """``sha256:<hex>`` over header + entries: the ``chunk_digest`` annotation."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()


def chunk_count(uncompressed_size: int, chunk_size: int) -> int:
    return -(-uncompressed_size // chunk_size)


def build_table(
    uncompressed_size: int,
    chunk_size: int,
    offsets: list[int],
    digests: list[bytes] | None,
) -> bytes:
    """The v1 table payload (header + entries) for frames at ``offsets``."""
    algo = HASH_SHA512 if digests is not None else HASH_NONE
    if len(offsets) != chunk_count(uncompressed_size, chunk_size):
        raise ValueError("one offset per chunk is required")
    if digests is not None and len(digests) != len(offsets):
        raise ValueError("one digest per chunk is required")
    parts = [HEADER.pack(TABLE_MAGIC, TABLE_VERSION, uncompressed_size, chunk_size, algo, 0)]
    for i, offset in enumerate(offsets):
        parts.append(offset.to_bytes(8, "little"))
        if digests is not None:
            parts.append(digests[i])
    return b"".join(parts)


def skippable_frame(payload: bytes, magic: int = SKIPPABLE_TABLE_MAGIC) -> bytes:
    """Wrap ``payload`` as a zstd skippable frame (every zstd decoder skips it)."""
    return magic.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def parse_v1(payload: bytes) -> ChunkTable:
    """Parse and sanity-check the containerd (PR 12764) table layout."""
    if len(payload) < HEADER.size:
        raise DataError(
            f"chunk table: {len(payload)} bytes, too short for its {HEADER.size}-byte header"
        )
    magic, version, size, chunk_size, algo, reserved = HEADER.unpack_from(payload)
    if magic != TABLE_MAGIC:
        raise DataError(f"chunk table: bad magic 0x{magic:08x}")
    if version != TABLE_VERSION:
        raise DataError(f"chunk table: unknown version {version} (this decoder knows 1)")
    if reserved != 0:
        raise DataError(f"chunk table: reserved header field is 0x{reserved:04x}, not zero")
    if algo not in HASH_SIZES:
        raise DataError(f"chunk table: unknown hash algorithm {algo}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise DataError(
            f"chunk table: chunk size {chunk_size} is outside "
            f"{MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes"
        )
    if size == 0:
        raise DataError("chunk table: uncompressed size is 0")
    entry_size = 8 + HASH_SIZES[algo]
    body = len(payload) - HEADER.size
    count = chunk_count(size, chunk_size)
    if body % entry_size or body // entry_size != count:
        raise DataError(
            f"chunk table: holds {body / entry_size:g} entries, but {size} bytes in "
            f"{chunk_size}-byte chunks need {count}"
        )
    chunks = []
    hash_size = HASH_SIZES[algo]
    at = HEADER.size
    previous = -1
    for i in range(count):
        offset = int.from_bytes(payload[at : at + 8], "little")
        digest = payload[at + 8 : at + 8 + hash_size] if hash_size else None
        if offset <= previous:
            raise DataError(f"chunk table: chunk {i} offset {offset} does not increase")
        previous = offset
        start = i * chunk_size
        chunks.append(Chunk(i, offset, start, min(chunk_size, size - start), digest))
        at += entry_size
    return ChunkTable("containerd-v1", version, size, chunk_size, algo, tuple(chunks), payload)


# Payload magic -> parser. The draft erofs-image-spec index would be a second entry.
LAYOUTS: dict[bytes, Callable[[bytes], ChunkTable]] = {TABLE_MAGIC_BYTES: parse_v1}


def is_table_payload(head: bytes) -> bool:
    return head[:4] in LAYOUTS


def parse_table(payload: bytes) -> ChunkTable:
    """Parse a skippable frame's payload with the layout its magic names."""
    parser = LAYOUTS.get(payload[:4])
    if parser is None:
        raise DataError(f"chunk table: unknown layout magic {payload[:4].hex()}")
    return parser(payload)


def describe_skippable(magic: int, head: bytes) -> str:
    """A short name for a skippable frame's content, for logs and ``inspect``."""
    if is_table_payload(head):
        return "chunk table"
    if head.startswith(VERITY_SIGNATURE):
        return "dm-verity data"
    return f"unknown (magic 0x{magic:08x})"


@dataclass
class SeenFrame:
    """A zstd frame as the decoder met it."""

    offset: int
    end_offset: int = -1
    decompressed_size: int = -1
    digest: bytes | None = None


class ChunkTableVerifier:
    """A ``zstd_codec.FrameObserver`` that checks the stream against its chunk table.

    The table normally follows the frames it describes, so the verifier
    records each frame's offset, decompressed size and SHA-512 as they stream
    by (SHA-512 only for frames small enough to be chunks, so plain
    single-frame layers do not pay for hashing), and compares everything in
    ``finish``. ``finish`` runs before the decoder's generator ends, hence
    before the sink releases the held-back tail: a mismatch always leaves
    stdout short of a complete image.
    """

    def __init__(self, notes: list[str] | None = None) -> None:
        self.frames: list[SeenFrame] = []
        self.overflow = False
        self.table: ChunkTable | None = None
        self.table_offset: int | None = None
        self.skipped: list[tuple[int, int, str]] = []  # (offset, size, what)
        self.notes = notes if notes is not None else []
        self.verified = False
        self._what = "unknown"

    # -- FrameObserver -------------------------------------------------------------
    def digest_algorithm(self, content_size: int | None) -> str | None:
        if content_size is None or content_size > MAX_CHUNK_SIZE:
            return None
        return "sha512"

    def frame_start(self, index: int, offset: int, content_size: int | None) -> None:
        if index >= MAX_TRACKED_FRAMES:
            self.overflow = True
            return
        self.frames.append(SeenFrame(offset))

    def frame_digest(self, index: int, digest: bytes) -> None:
        if index < len(self.frames):
            self.frames[index].digest = digest

    def frame_end(self, index: int, end_offset: int, decompressed_size: int) -> None:
        if index < len(self.frames):
            frame = self.frames[index]
            frame.end_offset = end_offset
            frame.decompressed_size = decompressed_size

    def wants_payload(self, magic: int, offset: int, size: int, head: bytes) -> bool:
        self._what = describe_skippable(magic, head)
        return is_table_payload(head)

    def skippable(self, magic: int, offset: int, size: int, payload: bytes | None) -> None:
        if payload is None:
            self.skipped.append((offset, size, self._what))
            self.notes.append(f"skipped {self._what} in a skippable frame at offset {offset}")
            return
        if self.table is not None:
            raise DataError(
                f"chunk table: a second chunk table at offset {offset} "
                f"(the first is at {self.table_offset})"
            )
        self.table = parse_table(payload)
        self.table_offset = offset

    def finish(self, total_out: int, end_offset: int) -> None:
        table = self.table
        if table is None:
            return
        verify(table, self.frames, self.overflow, total_out)
        self.verified = True


def verify(table: ChunkTable, frames: list[SeenFrame], overflow: bool, total_out: int) -> None:
    """Raise ``DataError`` naming the first chunk that does not match the table."""
    if overflow or len(frames) != len(table.chunks):
        count = f"more than {MAX_TRACKED_FRAMES}" if overflow else str(len(frames))
        raise DataError(
            f"chunk table: lists {len(table.chunks)} chunks but the stream holds "
            f"{count} zstd frames"
        )
    for chunk, frame in zip(table.chunks, frames, strict=True):
        where = f"chunk table: chunk {chunk.index}"
        if frame.offset != chunk.compressed_offset:
            raise DataError(
                f"{where}: frame starts at offset {frame.offset}, "
                f"the table says {chunk.compressed_offset}"
            )
        if frame.decompressed_size != chunk.uncompressed_size:
            raise DataError(
                f"{where} (frame at offset {frame.offset}): decompresses to "
                f"{frame.decompressed_size} bytes, the table says {chunk.uncompressed_size}"
            )
        if chunk.digest is not None:
            if frame.digest is None:
                raise DataError(
                    f"{where} (frame at offset {frame.offset}): the frame does not declare "
                    "a content size of at most the largest chunk, so it is not a chunk"
                )
            if frame.digest != chunk.digest:
                raise DataError(
                    f"{where} (frame at offset {frame.offset}): SHA-512 of the compressed "
                    "frame does not match the table"
                )
    if total_out != table.uncompressed_size:
        raise DataError(
            f"chunk table: the stream decompresses to {total_out} bytes, "
            f"the table says {table.uncompressed_size}"
        )
