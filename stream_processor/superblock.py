"""The EROFS superblock: parse it, check its CRC32C, and judge it mountable.

Layout and checksum rule: docs/superblock.md (little-endian, at byte
1024; CRC32C seeded with 0xFFFFFFFF, no final xor, over the rest of the first
block with the checksum field read as zero).
"""

from __future__ import annotations

import os
import struct

from stream_processor.errors import DataError

SUPERBLOCK_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2
EROFS_MAGIC_BYTES = b"\xe2\xe1\xf5\xe0"
BASE_SIZE = 128
MIN_BLKSZBITS = 9
MAX_HEAD_BLKSZBITS = 16  # 64 KiB, the largest page size a kernel mounts EROFS blocks with

COMPAT_SB_CHKSUM = 0x1
COMPAT_NAMES = {0x1: "sb_csum", 0x2: "mtime", 0x4: "xattr_filter", 0x8: "shared_ea_in_metabox"}
INCOMPAT_KNOWN = 0x1FF
INCOMPAT_48BIT = 0x80
INCOMPAT_NAMES = {  # the kernel's erofs_fs.h; some bits carry two names
    0x1: "0padding",
    0x2: "compr_cfgs/big_pcluster",
    0x4: "chunked_file",
    0x8: "device_table/compr_head2",
    0x10: "ztailpacking",
    0x20: "fragments/dedupe",
    0x40: "xattr_prefixes",
    INCOMPAT_48BIT: "48bit",
    0x100: "metabox",
}

Buffer = bytes | bytearray | memoryview

_LAYOUT = struct.Struct("<IIIBBHQQIIII16s16sI")
_ROOTNID_8B_OFFSET = 0x70  # u64: the root nid when 48BIT is on
_FIELDS = (
    "checksum",
    "feature_compat",
    "blkszbits",
    "sb_extslots",
    "root_nid",
    "inodes",
    "build_time",
    "build_time_nsec",
    "blocks",
    "meta_blkaddr",
    "xattr_blkaddr",
    "uuid",
    "volume_name",
    "feature_incompat",
)


def _page_shift() -> int:
    try:
        return (os.sysconf("SC_PAGE_SIZE") or 4096).bit_length() - 1
    except (ValueError, OSError):  # pragma: no cover - every Linux has it
        return 12


_CRC32C_TABLE: list[int] = []


def _crc32c_table() -> list[int]:
    """Built on first use (only images with SB_CHKSUM need it), then kept."""
    if not _CRC32C_TABLE:
        table = []
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        _CRC32C_TABLE[:] = table  # in one step: another thread never sees half a table
    return _CRC32C_TABLE


def crc32c(data: Buffer, crc: int = 0xFFFFFFFF) -> int:
    """CRC32C (Castagnoli) as EROFS uses it: no final xor. Small inputs only."""
    table = _crc32c_table()
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class Superblock:
    """The fields of an EROFS superblock that a user or a validator cares about, in the
    on-disk order (a plain class: ``typing.NamedTuple`` would import ``typing`` on every
    layer's start-up)."""

    __slots__ = _FIELDS

    def __init__(
        self,
        checksum: int,
        feature_compat: int,
        blkszbits: int,
        sb_extslots: int,
        root_nid: int,
        inodes: int,
        build_time: int,
        build_time_nsec: int,
        blocks: int,
        meta_blkaddr: int,
        xattr_blkaddr: int,
        uuid: bytes,
        volume_name: bytes,
        feature_incompat: int,
    ) -> None:
        self.checksum = checksum
        self.feature_compat = feature_compat
        self.blkszbits = blkszbits
        self.sb_extslots = sb_extslots
        self.root_nid = root_nid
        self.inodes = inodes
        self.build_time = build_time
        self.build_time_nsec = build_time_nsec
        self.blocks = blocks
        self.meta_blkaddr = meta_blkaddr
        self.xattr_blkaddr = xattr_blkaddr
        self.uuid = uuid
        self.volume_name = volume_name
        self.feature_incompat = feature_incompat

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Superblock({fields})"

    @property
    def block_size(self) -> int:
        return 1 << self.blkszbits

    @property
    def image_size(self) -> int:
        """The size the superblock promises: ``blocks << blkszbits``."""
        return self.blocks << self.blkszbits

    @property
    def superblock_size(self) -> int:
        return BASE_SIZE + 16 * self.sb_extslots

    @property
    def has_checksum(self) -> bool:
        return bool(self.feature_compat & COMPAT_SB_CHKSUM)

    @property
    def uuid_str(self) -> str:
        import uuid  # only inspect shows it: keep it off the decoder's start-up

        return str(uuid.UUID(bytes=self.uuid))

    @property
    def volume_label(self) -> str:
        return self.volume_name.split(b"\0", 1)[0].decode("utf-8", "replace")

    def feature_names(self) -> list[str]:
        names = [n for bit, n in COMPAT_NAMES.items() if self.feature_compat & bit]
        names += [n for bit, n in INCOMPAT_NAMES.items() if self.feature_incompat & bit]
        return names

    def checksum_region(self) -> tuple[int, int]:
        """Byte range [start, end) of the image that the checksum covers."""
        if self.block_size <= SUPERBLOCK_OFFSET:
            return SUPERBLOCK_OFFSET, SUPERBLOCK_OFFSET + self.block_size
        return SUPERBLOCK_OFFSET, self.block_size


def has_magic(head: Buffer) -> bool:
    """True if ``head`` (the start of a stream) carries the EROFS magic at 1024."""
    return bytes(head[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 4]) == EROFS_MAGIC_BYTES


def parse(head: Buffer) -> Superblock:
    """Parse the superblock from the first bytes of an image (no validation beyond magic)."""
    raw = bytes(head[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + _LAYOUT.size])
    if len(raw) < _LAYOUT.size:
        raise DataError(f"not an EROFS image: only {len(head)} bytes, too short for a superblock")
    fields = _LAYOUT.unpack(raw)
    if fields[0] != EROFS_MAGIC:
        raise DataError("not an EROFS image: no EROFS superblock magic at offset 1024")
    sb = Superblock(*fields[1:])
    if sb.feature_incompat & INCOMPAT_48BIT:
        # 48-bit layout: the 16 bits at 0x0E are the block count's top bits, and the
        # root nid moves to a 64-bit field at 0x70.
        start = SUPERBLOCK_OFFSET + _ROOTNID_8B_OFFSET
        rootnid = bytes(head[start : start + 8])
        sb.blocks |= sb.root_nid << 32
        if len(rootnid) == 8:
            sb.root_nid = int.from_bytes(rootnid, "little")
    return sb


def required_head(head: Buffer) -> int:
    """How many leading bytes ``validate`` needs: the whole first block (at least 1024+128).

    While ``head`` is shorter than the superblock itself the answer is the
    superblock's end; ask again once that much has arrived.
    """
    if len(head) < SUPERBLOCK_OFFSET + BASE_SIZE:
        return SUPERBLOCK_OFFSET + BASE_SIZE
    sb = parse(head)
    if sb.blkszbits > MAX_HEAD_BLKSZBITS:
        # validate() refuses this block size; never buffer 2^blkszbits bytes to find out.
        return SUPERBLOCK_OFFSET + BASE_SIZE
    start, end = sb.checksum_region()
    return max(end, SUPERBLOCK_OFFSET + sb.superblock_size, start + BASE_SIZE)


def validate(head: Buffer, page_shift: int | None = None) -> Superblock:
    """Check that ``head`` (the image's first block or more) holds a mountable superblock.

    Checks: magic, block size within what the kernel accepts (9 .. PAGE_SHIFT of
    this host), a superblock that fits in its first block, the CRC32C when
    SB_CHKSUM is set, and no ``feature_incompat`` bits this tool does not know.
    """
    sb = parse(head)
    max_bits = page_shift if page_shift is not None else _page_shift()
    if not MIN_BLKSZBITS <= sb.blkszbits <= max_bits:
        raise DataError(
            f"EROFS superblock: block size 2^{sb.blkszbits} is outside what the kernel "
            f"mounts here (2^{MIN_BLKSZBITS}..2^{max_bits})"
        )
    if sb.block_size > SUPERBLOCK_OFFSET and (
        SUPERBLOCK_OFFSET + sb.superblock_size > sb.block_size
    ):
        raise DataError(
            f"EROFS superblock: {sb.superblock_size} bytes with {sb.sb_extslots} extension "
            f"slots do not fit in the first {sb.block_size}-byte block"
        )
    unknown = sb.feature_incompat & ~INCOMPAT_KNOWN
    if unknown:
        raise DataError(f"EROFS superblock: unknown incompatible features 0x{unknown:x}")
    if sb.blocks == 0:
        raise DataError("EROFS superblock: the image claims 0 blocks")
    if sb.has_checksum:
        start, end = sb.checksum_region()
        if len(head) < end:
            raise DataError(f"EROFS superblock: need {end} bytes to check the checksum")
        region = bytearray(head[start:end])
        region[4:8] = b"\0\0\0\0"
        actual = crc32c(region)
        if actual != sb.checksum:
            raise DataError(
                f"EROFS superblock: checksum mismatch (stored 0x{sb.checksum:08x}, "
                f"computed 0x{actual:08x})"
            )
    return sb
