"""dm-verity data for seekable layers: the superblock, the hash tree, checking both.

The layout is the one containerd's seekable-EROFS code writes and
``veritysetup format --hash-offset`` reads, described in docs/seekable.md
("dm-verity payload"). ``TreeBuilder`` hashes the image as it streams by
(``pack`` feeds it the chunks it compresses), so the salt must be known
before the first block: ``derive_salt`` takes it from the image's first
block and ``derive_uuid`` the UUID from the image's SHA-256, so the same
image always gets the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import IO, NamedTuple

from stream_processor.errors import DataError, InputOutputError

SIGNATURE = b"verity\0\0"
SUPERBLOCK_SIZE = 512
# signature, version, hash type, uuid, algorithm, data block size, hash block size,
# data blocks, salt size, padding, salt (then 168 bytes of padding to 512)
_SB = struct.Struct("<8sII16s32sIIQH6x256s")
VERSION = 1
HASH_TYPE = 1  # the normal format: salt first (0 is Chrome OS's, salt last)
DEFAULT_HASH = "sha512"
# The hashes both hashlib and the kernel's dm-verity (crypto API names) know.
HASH_NAMES = ("sha1", "sha224", "sha256", "sha384", "sha512")
DEFAULT_BLOCK_SIZE = 4096
# What ``pack`` writes: the kernel's dm-verity takes powers of two from 512 bytes up to its
# page size (4 KiB on x86-64), so these mount everywhere.
BLOCK_SIZES = (512, 1024, 2048, 4096)
# What the reader accepts: every power of two containerd writes (go-dmverity's
# IsBlockSizeValid, ``ctr images convert --erofs-dm-verity-block-size``) and
# ``veritysetup`` formats, 512 bytes to 512 KiB. A layer with blocks above the page
# size decodes and verifies in user space, even where the kernel cannot mount it.
MIN_READ_BLOCK_SIZE = 512
MAX_READ_BLOCK_SIZE = 512 << 10
SALT_SIZE = 32
MAX_SALT = 256
_SALT_CONTEXT = b"erofs-stream-processor dm-verity salt v1\0"
_UUID_CONTEXT = b"erofs-stream-processor dm-verity uuid v1\0"


class Superblock(NamedTuple):
    """The fields of a dm-verity superblock (all of them; the rest is padding)."""

    version: int
    hash_type: int
    uuid: bytes
    hash_name: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    def pack(self) -> bytes:
        raw = _SB.pack(
            SIGNATURE,
            self.version,
            self.hash_type,
            self.uuid,
            self.hash_name.encode(),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            len(self.salt),
            self.salt,
        )
        return raw.ljust(SUPERBLOCK_SIZE, b"\0")

    @property
    def uuid_str(self) -> str:
        h = self.uuid.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size


def parse_superblock(data: bytes) -> Superblock:
    """Parse and sanity-check a superblock; ``DataError`` names the first bad field."""
    if len(data) < _SB.size:
        raise DataError(f"dm-verity: superblock is {len(data)} bytes, needs {_SB.size}")
    sig, version, hash_type, uuid, algo, dbs, hbs, blocks, salt_size, salt = _SB.unpack_from(data)
    if sig != SIGNATURE:
        raise DataError("dm-verity: no 'verity' signature at the start of the frame")
    if version != VERSION:
        raise DataError(f"dm-verity: superblock version {version}, this program knows 1")
    if hash_type != HASH_TYPE:
        raise DataError(f"dm-verity: hash type {hash_type}, this program knows 1 (salt first)")
    name = algo.split(b"\0")[0].decode("ascii", "replace")
    if name not in HASH_NAMES:
        raise DataError(f"dm-verity: unknown hash algorithm {name!r}")
    for what, size in (("data", dbs), ("hash", hbs)):
        if not readable_block_size(size):
            raise DataError(
                f"dm-verity: {what} block size {size} is not a power of two from "
                f"{MIN_READ_BLOCK_SIZE} to {MAX_READ_BLOCK_SIZE} bytes"
            )
    if salt_size > MAX_SALT:
        raise DataError(f"dm-verity: salt size {salt_size} exceeds {MAX_SALT}")
    if blocks == 0:
        raise DataError("dm-verity: the superblock covers 0 data blocks")
    return Superblock(version, hash_type, uuid, name, dbs, hbs, blocks, salt[:salt_size])


def readable_block_size(size: int) -> bool:
    """True for the block sizes the reader accepts (what containerd writes)."""
    return MIN_READ_BLOCK_SIZE <= size <= MAX_READ_BLOCK_SIZE and size & (size - 1) == 0


def check_block_size(size: int) -> int:
    """``size`` if dm-verity accepts it as a block size, else ``ValueError`` saying which do."""
    if size not in BLOCK_SIZES:
        raise ValueError(
            f"dm-verity block size {size} is not one of {', '.join(map(str, BLOCK_SIZES))}"
        )
    return size


def hashes_per_block(hash_block_size: int, digest_size: int) -> int:
    """Digests in one hash block: a power of two, as the kernel indexes them by shifting."""
    n = hash_block_size // digest_size
    return 1 << (n.bit_length() - 1)


def level_blocks(data_blocks: int, per_block: int) -> list[int]:
    """Hash blocks of each level, level 0 (hashes of data blocks) first; [] for one block."""
    levels: list[int] = []
    n = data_blocks
    while n > 1:
        n = -(-n // per_block)
        levels.append(n)
    return levels


def tree_size(data_blocks: int, hash_block_size: int, digest_size: int) -> int:
    per_block = hashes_per_block(hash_block_size, digest_size)
    return sum(level_blocks(data_blocks, per_block)) * hash_block_size


def derive_salt(first_block: bytes) -> bytes:
    """The salt: SHA-256 of the image's first 4 KiB (its superblock, UUID and build time)."""
    return hashlib.sha256(_SALT_CONTEXT + first_block[:4096]).digest()[:SALT_SIZE]


def derive_uuid(image_sha256: bytes) -> bytes:
    """A version-8 (RFC 9562, custom) UUID from the image's SHA-256."""
    raw = bytearray(hashlib.sha256(_UUID_CONTEXT + image_sha256).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


class TreeBuilder:
    """Level-0 digests of the image as it streams by; the whole tree at ``finish``."""

    def __init__(
        self,
        salt: bytes,
        block_size: int = DEFAULT_BLOCK_SIZE,
        hash_name: str = DEFAULT_HASH,
        hash_block_size: int | None = None,  # veritysetup allows it to differ; None: the same
    ) -> None:
        self.salt = salt
        self.block_size = block_size
        self.hash_block_size = hash_block_size or block_size
        self.hash_name = hash_name
        self._salted = hashlib.new(hash_name, salt)
        self.digest_size = self._salted.digest_size
        self.level0 = bytearray()
        self.data_bytes = 0
        self._carry = b""

    def hash_blocks(self, data: bytes | memoryview) -> bytes:
        """Digests of ``data``'s blocks (the last one zero-padded); thread-safe, no state."""
        bs = self.block_size
        view = memoryview(data)
        out = bytearray()
        for at in range(0, len(view), bs):
            h = self._salted.copy()
            block = view[at : at + bs]
            h.update(block)
            if len(block) < bs:
                h.update(bytes(bs - len(block)))
            out += h.digest()
        return bytes(out)

    def add_digests(self, digests: bytes, data_bytes: int) -> None:
        """Digests ``hash_blocks`` made elsewhere (a worker thread), in image order."""
        if self._carry:
            raise ValueError("add_digests after an unaligned update")
        self.level0 += digests
        self.data_bytes += data_bytes

    def update(self, data: bytes | memoryview) -> None:
        """Hash ``data`` in order; a partial block waits for the next call."""
        self.data_bytes += len(data)
        if self._carry:
            data = self._carry + bytes(data)
            self._carry = b""
        whole = len(data) - len(data) % self.block_size
        if whole:
            self.level0 += self.hash_blocks(memoryview(data)[:whole])
        self._carry = bytes(data[whole:])

    @property
    def data_blocks(self) -> int:
        return -(-self.data_bytes // self.block_size)

    def finish(self) -> tuple[bytes, bytes]:
        """``(tree, root)``: the hash area (top level first) and the root digest."""
        if self._carry:
            self.level0 += self.hash_blocks(self._carry)
            self._carry = b""
        return build_tree(bytes(self.level0), self.salt, self.hash_block_size, self.hash_name)


def build_tree(
    level0: bytes, salt: bytes, hash_block_size: int, hash_name: str
) -> tuple[bytes, bytes]:
    """The hash area and root digest from the data blocks' digests (in order)."""
    salted = hashlib.new(hash_name, salt)
    size = salted.digest_size
    if len(level0) == size:  # one data block: no hash blocks, its digest is the root
        return b"", level0
    per_block = hashes_per_block(hash_block_size, size)
    levels: list[bytes] = []
    digests = level0
    while True:
        span = per_block * size
        blocks = []
        upper = bytearray()
        for at in range(0, len(digests), span):
            block = digests[at : at + span].ljust(hash_block_size, b"\0")
            blocks.append(block)
            h = salted.copy()
            h.update(block)
            upper += h.digest()
        levels.append(b"".join(blocks))
        if len(blocks) == 1:
            return b"".join(reversed(levels)), bytes(upper)
        digests = bytes(upper)


def build_payload(sb: Superblock, tree: bytes) -> bytes:
    """The skippable frame's payload: superblock, padding to one block, the tree."""
    return sb.pack().ljust(sb.hash_block_size, b"\0") + tree


def root_digest(sb: Superblock, root: bytes) -> str:
    return f"{sb.hash_name}:{root.hex()}"


def check_against_image(sb: Superblock, payload_size: int, image_size: int) -> None:
    """The cheap checks the decoder always makes: the superblock fits this image."""
    want = -(-image_size // sb.data_block_size)
    if sb.data_blocks != want:
        raise DataError(
            f"dm-verity: the superblock covers {sb.data_blocks} data blocks of "
            f"{sb.data_block_size} bytes, the image has {want} ({image_size} bytes)"
        )
    need = sb.hash_block_size + tree_size(sb.data_blocks, sb.hash_block_size, sb.digest_size)
    if payload_size < need:
        raise DataError(f"dm-verity: the frame holds {payload_size} bytes, its tree needs {need}")


def verify_tree(sb: Superblock, payload: bytes, image: Iterator[bytes]) -> str:
    """Recompute the tree over ``image``; ``DataError`` names the first part that differs.

    Returns the root digest (``sha512:<hex>``) for the caller to compare with
    an annotation.
    """
    builder = TreeBuilder(sb.salt, sb.data_block_size, sb.hash_name, sb.hash_block_size)
    for piece in image:
        builder.update(piece)
    check_against_image(sb, len(payload), builder.data_bytes)
    tree, root = builder.finish()
    stored = payload[sb.hash_block_size : sb.hash_block_size + len(tree)]
    if stored != tree:
        raise DataError(f"dm-verity: {_where(tree, stored, sb)} does not match the image")
    rest = payload[sb.hash_block_size + len(tree) :]
    if rest.strip(b"\0"):
        raise DataError("dm-verity: non-zero bytes after the hash tree")
    return root_digest(sb, root)


def _where(tree: bytes, stored: bytes, sb: Superblock) -> str:
    """Name the hash block that differs: its level and the data blocks it covers."""
    bs = sb.hash_block_size
    ours, theirs = memoryview(tree), memoryview(stored)
    block = next(
        (i for i in range(len(tree) // bs) if ours[i * bs : (i + 1) * bs] != theirs[i * bs :][:bs]),
        0,
    )
    per_block = hashes_per_block(bs, sb.digest_size)
    levels = level_blocks(sb.data_blocks, per_block)
    start = 0
    for level in range(len(levels) - 1, -1, -1):  # stored top level first
        if block < start + levels[level]:
            index = block - start
            covers = per_block ** (level + 1)
            lo = index * covers
            hi = min(sb.data_blocks, lo + covers) - 1
            return f"hash tree level {level}, block {index} (data blocks {lo}..{hi})"
        start += levels[level]
    return "the hash tree"


class ImageSpool:
    """The decoded image, kept in an unlinked temporary file so its tree can be recomputed
    after the dm-verity frame (which comes last) gives the salt. Disk, not memory."""

    PIECE = 1 << 20

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.size = 0

    def tee(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.write(chunk)
            yield chunk

    def write(self, chunk: bytes | memoryview) -> None:
        try:
            if self._file is None:
                import tempfile  # only --verify-dm-verity and inspect spool

                self._file = tempfile.TemporaryFile(prefix="erofs-sp-verity-")  # noqa: SIM115
            self._file.write(chunk)
        except OSError as exc:
            raise InputOutputError.from_os_error(
                "cannot spool the image for --verify-dm-verity", exc
            ) from exc
        self.size += len(chunk)

    def read(self) -> Iterator[bytes]:
        if self._file is None:
            return
        self._file.flush()
        self._file.seek(0)
        while piece := self._file.read(self.PIECE):
            yield piece

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
