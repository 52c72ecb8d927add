"""The seekable EROFS layer: the chunk table, and checking a stream against it.

The layout (containerd PR 12764) is described in docs/seekable.md: chunks as
independent zstd frames, then the table in a skippable frame. Every table
layout parses into the same ``ChunkTable`` and ``ChunkTableVerifier`` checks
only that form, so a second layout (the draft erofs-image-spec index) is a
parser registered in ``LAYOUTS`` under its magic. No length from the blob is
trusted before it is bounded (``TABLE_PAYLOAD_LIMIT``, ``MAX_TRACKED_FRAMES``).
"""

from __future__ import annotations

import struct

from stream_processor.errors import DataError
from stream_processor.framing import SKIPPABLE_MAGIC, SKIPPABLE_MASK

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from array import array
    from collections.abc import Callable
    from typing import Any

    from stream_processor.dmverity import ImageSpool, Superblock
    from stream_processor.zstd_codec import SkippableFrame

SKIPPABLE_TABLE_MAGIC = SKIPPABLE_MAGIC  # the table is written with the first skippable magic
TABLE_MAGIC = 0xCDE4EC67
TABLE_MAGIC_BYTES = TABLE_MAGIC.to_bytes(4, "little")
TABLE_VERSION = 1
HEADER = struct.Struct("<IIQIBH")  # magic, version, uncompressed size, chunk size, algo, reserved
HASH_NONE = 0
HASH_SHA512 = 1
HASH_SIZES = {HASH_NONE: 0, HASH_SHA512: 64}
HASH_NAMES = {HASH_NONE: "none", HASH_SHA512: "sha512"}
# What ``pack`` writes. The reader accepts any chunk size above 0 and an empty table, as
# containerd does (docs/seekable.md, "Chunk sizes the decoder accepts").
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 << 20  # larger chunks defeat seeking
MAX_TRACKED_FRAMES = 1 << 19  # 2 TiB in 4 MiB chunks; 16 MiB of bookkeeping at most
TABLE_PAYLOAD_LIMIT = 16 << 20  # 233,000 chunks with SHA-512: ~900 GiB in 4 MiB chunks

ANNOTATION_TABLE_OFFSET = "dev.containerd.erofs.zstd.chunk_table_offset"
ANNOTATION_TABLE_DIGEST = "dev.containerd.erofs.zstd.chunk_digest"
ANNOTATION_VERITY_OFFSET = "dev.containerd.erofs.dmverity.offset"
ANNOTATION_VERITY_ROOT = "dev.containerd.erofs.dmverity.root_digest"

VERITY_SIGNATURE = b"verity\0\0"  # first bytes of a dm-verity superblock


class Chunk:
    """One chunk as a table describes it, whatever the table's layout."""

    __slots__ = (
        "compressed_offset",
        "digest",
        "number",
        "uncompressed_offset",
        "uncompressed_size",
    )

    def __init__(
        self,
        number: int,  # the chunk's position in the table
        compressed_offset: int,  # blob offset of the chunk's zstd frame
        uncompressed_offset: int,
        uncompressed_size: int,
        digest: bytes | None,  # hash of the whole compressed frame, if the table has one
    ) -> None:
        self.number = number
        self.compressed_offset = compressed_offset
        self.uncompressed_offset = uncompressed_offset
        self.uncompressed_size = uncompressed_size
        self.digest = digest


class ChunkTable:
    """A parsed chunk table, in the layout-independent form the verifier checks.

    Entries live in flat arrays (24 bytes a chunk plus the digests), not in
    one object per chunk: a table is untrusted input and may list ~10^5
    chunks. ``chunks`` / ``chunk(i)`` give ``Chunk`` views on demand.
    """

    def __init__(
        self,
        *,
        layout: str,
        version: int,
        uncompressed_size: int,
        chunk_size: int,
        hash_algo: int,
        compressed_offsets: array[int],
        uncompressed_offsets: array[int],
        uncompressed_sizes: array[int],
        digests: bytes,
        raw: bytes,
    ) -> None:
        self.layout = layout
        self.version = version
        self.uncompressed_size = uncompressed_size
        self.chunk_size = chunk_size
        self.hash_algo = hash_algo
        self.compressed_offsets = compressed_offsets
        self.uncompressed_offsets = uncompressed_offsets
        self.uncompressed_sizes = uncompressed_sizes
        self.digests = digests  # digest_size bytes per chunk, concatenated; b"" without hashes
        self.raw = raw  # the payload: header + entries, as stored

    @property
    def count(self) -> int:
        return len(self.compressed_offsets)

    @property
    def digest_size(self) -> int:
        return HASH_SIZES.get(self.hash_algo, 0)

    @property
    def hash_name(self) -> str:
        return HASH_NAMES.get(self.hash_algo, str(self.hash_algo))

    def chunk(self, i: int) -> Chunk:
        size = self.digest_size
        return Chunk(
            i,
            self.compressed_offsets[i],
            self.uncompressed_offsets[i],
            self.uncompressed_sizes[i],
            self.digests[i * size : (i + 1) * size] if size else None,
        )

    @property
    def chunks(self) -> list[Chunk]:
        return [self.chunk(i) for i in range(self.count)]

    def digest(self) -> str:
        """``sha512:<hex>`` over header + entries: the ``chunk_digest`` annotation."""
        return table_digest(self.raw)


def table_digest(payload: bytes) -> str:
    """The ``chunk_digest`` annotation: ``sha512:<hex>`` over the table payload, the only
    form containerd's reader accepts (docs/seekable.md)."""
    import hashlib

    return "sha512:" + hashlib.sha512(payload).hexdigest()


DIGEST_FORMS = ("sha512", "sha256")  # sha256: what this project wrote before


class FrameCapture:
    """Pass a blob through (``read``/``readinto``), keeping the skippable frame at ``offset``.

    ``convert`` re-wraps an EROFS layer by streaming it once; this keeps the
    source's chunk table on the way, so its ``chunk_digest`` annotation can be
    checked without reading the blob twice. At most ``TABLE_PAYLOAD_LIMIT`` is kept.
    """

    def __init__(self, raw: Any, offset: int) -> None:
        self._raw = raw
        self._offset = offset
        self._at = 0
        self._kept = bytearray()

    def _keep(self, data: bytes | memoryview) -> None:
        start, end = self._at, self._at + len(data)
        self._at = end
        want = 8 + TABLE_PAYLOAD_LIMIT
        if len(self._kept) >= 8:
            want = min(want, 8 + int.from_bytes(self._kept[4:8], "little"))
        lo = max(start, self._offset + len(self._kept))
        hi = min(end, self._offset + want)
        if lo < hi:
            self._kept += data[lo - start : hi - start]

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        self._keep(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._raw.readinto(buffer)
        self._keep(memoryview(buffer)[:n])
        return n

    def readable(self) -> bool:
        return True

    def payload(self) -> bytes:
        """The frame's payload; ``DataError`` if the blob has no skippable frame there."""
        head = bytes(self._kept[:8])
        magic = int.from_bytes(head[:4], "little")
        if len(head) < 8 or (magic & SKIPPABLE_MASK) != SKIPPABLE_MAGIC:
            raise DataError(
                f"chunk_table_offset annotation {self._offset}: no skippable frame there"
            )
        return bytes(self._kept[8:])


def check_table_digest(payload: bytes, annotation: str) -> str:
    """Check a ``chunk_digest`` annotation against the table payload.

    Accepts ``sha512:`` (containerd's form) and ``sha256:`` (earlier versions
    of this project); returns the algorithm found. ``DataError`` if the form
    is unknown or the digest differs.
    """
    algo, _, hexdigest = annotation.partition(":")
    if algo not in DIGEST_FORMS or not hexdigest:
        raise DataError(
            f"chunk_digest annotation {annotation!r} is neither sha512:<hex> nor sha256:<hex>"
        )
    import hashlib

    if hashlib.new(algo, payload).hexdigest() != hexdigest.lower():
        raise DataError(f"chunk_digest annotation ({algo}) does not match the chunk table")
    return algo


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
    # Any chunk size above 0, and size 0 (no chunks), as containerd's reader: memory stays
    # bounded by TABLE_PAYLOAD_LIMIT and MAX_TRACKED_FRAMES, and a chunk too large for a
    # parallel job is streamed serially.
    if chunk_size == 0:
        raise DataError("chunk table: chunk size 0 is outside 1..4294967295 bytes")
    entry_size = 8 + HASH_SIZES[algo]
    body = len(payload) - HEADER.size
    count = chunk_count(size, chunk_size)
    if body % entry_size or body // entry_size != count:
        raise DataError(
            f"chunk table: holds {body / entry_size:g} entries, but {size} bytes in "
            f"{chunk_size}-byte chunks need {count}"
        )
    from array import array  # only a layer with a table: array loads collections

    hash_size = HASH_SIZES[algo]
    offsets = array("Q")
    digests = bytearray()
    at = HEADER.size
    previous = -1
    for i in range(count):
        offset = int.from_bytes(payload[at : at + 8], "little")
        if offset <= previous:
            raise DataError(f"chunk table: chunk {i} offset {offset} does not increase")
        previous = offset
        offsets.append(offset)
        digests += payload[at + 8 : at + 8 + hash_size]
        at += entry_size
    starts = array("Q", range(0, size, chunk_size))
    sizes = array("Q", [chunk_size] * count)
    if count:
        sizes[-1] = size - starts[-1]
    return ChunkTable(
        layout="containerd-v1",
        version=version,
        uncompressed_size=size,
        chunk_size=chunk_size,
        hash_algo=algo,
        compressed_offsets=offsets,
        uncompressed_offsets=starts,
        uncompressed_sizes=sizes,
        digests=bytes(digests),
        raw=payload,
    )


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


# What the verifier records of each frame, flat: offset, end, decompressed size (-1: not
# known yet) and an 8-byte fingerprint of its digest. ``array`` would load ``collections``
# on every layer's start-up; ``struct`` is loaded anyway.
_FRAME = struct.Struct("<QqqQ")
_END_AND_SIZE = struct.Struct("<qq")  # at 8 in a record
_FINGERPRINT = struct.Struct("<Q")  # at 24


class SeenFrame:
    """A zstd frame as the decoder met it (``-1``: not known yet)."""

    __slots__ = ("decompressed_size", "end_offset", "hashed", "offset")

    def __init__(self, offset: int, end_offset: int, decompressed_size: int, hashed: bool) -> None:
        self.offset = offset
        self.end_offset = end_offset
        self.decompressed_size = decompressed_size
        self.hashed = hashed


class ChunkTableVerifier:
    """A ``zstd_codec.FrameObserver`` that checks the stream against its chunk table.

    The table follows the frames it describes, so each frame's offset, end,
    decompressed size and SHA-512 are recorded as they stream by and compared
    in ``finish``, which runs before the decoder's generator ends, hence before
    the sink releases the held-back tail: a mismatch always leaves stdout short
    of a complete image. A frame's size is what it decoded to, not what its
    header declares: containerd's encoder writes chunks without a Frame Content
    Size. Memory is a 32-byte record per frame: digests are chained into one
    SHA-256, with an 8-byte fingerprint each to name the chunk that differs.

    With ``hash_frames=False`` (the decoder's default) no frame is hashed and
    the table's digests are not compared; every structural check stays.
    """

    def __init__(
        self,
        notes: list[str] | None = None,
        spool: ImageSpool | None = None,
        hash_frames: bool = True,
        keep_errors: bool = False,
    ) -> None:
        self._frames = bytearray()  # a ``_FRAME`` record per frame seen
        self.hashed = bytearray()  # per frame: 1 once its digest was recorded
        self.hash_frames = hash_frames
        self._chain: Any = None  # a hashlib SHA-256, made with the first digest
        self.overflow = False
        self.table: ChunkTable | None = None
        self.table_offset: int | None = None
        self.skipped: list[tuple[int, int, str]] = []  # (offset, size, what)
        self.notes = notes if notes is not None else []
        self.verified = False
        # With ``keep_errors`` (inspect) a table or dm-verity mismatch found by ``finish``
        # is recorded here instead of raised: a damaged blob is described, not refused.
        self.keep_errors = keep_errors
        self.table_error: str | None = None
        self.verity_error: str | None = None
        # dm-verity frame: its superblock is always checked (cheap); with a spool of
        # the image (--verify-dm-verity) the whole tree is recomputed in ``finish``.
        self.spool = spool
        self.verity: Superblock | None = None
        self.verity_offset: int | None = None
        self.verity_size = 0
        self.verity_payload: bytes | None = None
        self.verity_root: str | None = None  # set when the tree was recomputed and matched

    @property
    def frame_count(self) -> int:
        return len(self.hashed)

    def frames(self) -> list[SeenFrame]:
        """The frames seen so far, as objects (for reports; not used by the checks)."""
        return [
            SeenFrame(offset, end, size, bool(hashed))
            for (offset, end, size, _), hashed in zip(
                _FRAME.iter_unpack(self._frames), self.hashed, strict=True
            )
        ]

    def _offset(self, index: int) -> int:
        return int(_FRAME.unpack_from(self._frames, index * _FRAME.size)[0])

    # -- FrameObserver -------------------------------------------------------------
    def frame_start(self, index: int, offset: int) -> str | None:
        if index >= MAX_TRACKED_FRAMES:
            self.overflow = True
        else:
            self._frames += _FRAME.pack(offset, -1, -1, 0)
            self.hashed.append(0)
        # Every frame is hashed, whatever it declares: a chunk need not declare its size,
        # and a frame that is not a chunk fails the table's count or sizes anyway.
        return "sha512" if self.hash_frames else None

    def frame_end(
        self, index: int, end_offset: int, decompressed_size: int, digest: bytes | None
    ) -> None:
        if index >= self.frame_count:
            return
        at = index * _FRAME.size
        if digest is not None:
            if self._chain is None:
                import hashlib

                self._chain = hashlib.sha256()
            self._chain.update(digest)
            _FINGERPRINT.pack_into(self._frames, at + 24, _fingerprint(digest))
            self.hashed[index] = 1
        _END_AND_SIZE.pack_into(self._frames, at + 8, end_offset, decompressed_size)

    def skippable(self, frame: SkippableFrame) -> None:
        # A frame that is not read is skipped before it is recorded: a truncated one is
        # refused, not listed.
        offset, size, head = frame.offset, frame.size, frame.head
        what = describe_skippable(frame.magic, head)
        if head.startswith(VERITY_SIGNATURE):
            self._verity_frame(offset, size, head)
            if self.spool is not None:  # the tree is recomputed in ``finish``
                self.verity_payload = frame.payload()
            else:
                frame.skip()
            self.skipped.append((offset, size, what))
            return
        if not is_table_payload(head):
            frame.skip()
            self.skipped.append((offset, size, what))
            self.notes.append(f"skipped {what} in a skippable frame at offset {offset}")
            return
        if size > TABLE_PAYLOAD_LIMIT:
            raise DataError(
                f"chunk table: the table at offset {offset} declares {size} bytes, more than "
                f"the {TABLE_PAYLOAD_LIMIT} any real layer needs"
            )
        payload = frame.payload()
        if self.table is not None:
            raise DataError(
                f"chunk table: a second chunk table at offset {offset} "
                f"(the first is at {self.table_offset})"
            )
        self.table = parse_table(payload)
        self.table_offset = offset

    def _verity_frame(self, offset: int, size: int, head: bytes) -> None:
        from stream_processor.dmverity import parse_superblock

        if self.verity is not None:
            raise DataError(
                f"dm-verity: a second dm-verity frame at offset {offset} "
                f"(the first is at {self.verity_offset})"
            )
        self.verity = parse_superblock(head)
        self.verity_offset = offset
        self.verity_size = size

    def finish(self, total_out: int, end_offset: int) -> None:
        if self.table is not None:
            try:
                self._verify(self.table, total_out)
                self.verified = True
            except DataError as exc:
                self.table_error = self._kept(exc)
        if self.verity is not None:
            try:
                self._check_verity(self.verity, total_out)
            except DataError as exc:
                self.verity_error = self._kept(exc)
        elif self.spool is not None:
            self.notes.append("--verify-dm-verity: the layer has no dm-verity frame to verify")

    def _kept(self, exc: DataError) -> str:
        """A mismatch ``finish`` found: raised, or with ``keep_errors`` kept as its message."""
        if not self.keep_errors:
            raise exc
        return exc.message

    def close(self) -> None:
        """Drop the image spool (a temporary file) now, whether or not ``finish`` ran."""
        if self.spool is not None:
            self.spool.close()

    def _check_verity(self, sb: Superblock, total_out: int) -> None:
        from stream_processor import dmverity

        dmverity.check_against_image(sb, self.verity_size, total_out)
        if self.spool is None or self.verity_payload is None:
            self.notes.append(
                f"dm-verity frame at offset {self.verity_offset}: superblock checked, "
                "tree not recomputed (--verify-dm-verity does)"
            )
            return
        try:
            self.verity_root = dmverity.verify_tree(sb, self.verity_payload, self.spool.read())
        finally:
            self.spool.close()
        self.notes.append(f"dm-verity tree verified, root {self.verity_root}")

    def _verify(self, table: ChunkTable, total_out: int) -> None:
        """Raise ``DataError`` naming the first chunk that does not match the table."""
        if self.overflow or self.frame_count != table.count:
            count = f"more than {MAX_TRACKED_FRAMES}" if self.overflow else str(self.frame_count)
            raise DataError(
                f"chunk table: lists {table.count} chunks but the stream holds {count} zstd frames"
            )
        frames = _FRAME.iter_unpack(self._frames)
        for i, (offset, _, size, _) in enumerate(frames):
            if offset != table.compressed_offsets[i]:
                raise DataError(
                    f"chunk table: chunk {i}: frame starts at offset {offset}, "
                    f"the table says {table.compressed_offsets[i]}"
                )
            if size != table.uncompressed_sizes[i]:
                raise DataError(
                    f"chunk table: chunk {i} (frame at offset {offset}): decompresses to "
                    f"{size} bytes, the table says {table.uncompressed_sizes[i]}"
                )
        if table.digest_size and not self.hash_frames:
            self.notes.append(
                "the chunk table's SHA-512s were not checked (--verify-frame-hashes checks them)"
            )
        elif table.digest_size:
            chained = self._chain.digest() if self._chain is not None else _chain(None)
            if chained != _chain(table):
                i = _first_digest_difference(self._frames, table)
                where = f"chunk {i} (frame at offset {self._offset(i)})" if i >= 0 else "a chunk"
                raise DataError(
                    f"chunk table: {where}: SHA-512 of the compressed frame does not match "
                    "the table"
                )
        if total_out != table.uncompressed_size:
            raise DataError(
                f"chunk table: the stream decompresses to {total_out} bytes, "
                f"the table says {table.uncompressed_size}"
            )


def _chain(table: ChunkTable | None) -> bytes:
    """SHA-256 over the table's digests in order: what the verifier chains while streaming
    (``None``: over no digests, what an empty stream chains)."""
    import hashlib

    return hashlib.sha256(table.digests if table is not None else b"").digest()


def _fingerprint(digest: bytes) -> int:
    """8 bytes that change whenever any byte of ``digest`` does: names the chunk that differs."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(digest, digest_size=8).digest(), "little")


def _first_digest_difference(frames: bytearray, table: ChunkTable) -> int:
    size = table.digest_size
    for i, (_, _, _, fingerprint) in enumerate(_FRAME.iter_unpack(frames)):
        if fingerprint != _fingerprint(table.digests[i * size : (i + 1) * size]):
            return i
    return -1  # a 64-bit fingerprint collision: cannot name the chunk, still refused
