"""containerd's seekable-EROFS table reader, modelled from its rules (see test_dmverity).

Shared by test_dmverity and test_containerd_blobs: ``containerd_read`` gives the
raw image the way containerd's reader (PR 12764, ``internal/erofsutils/seekable``;
docs/seekable.md) would, or raises ``RefusedByReader`` where it would refuse.
"""

from __future__ import annotations

import hashlib
import struct

import zstandard

from stream_processor import seekable

SKIPPABLE_MIN, SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F


class RefusedByReader(Exception):
    """containerd's reader would refuse this blob."""


def skippable_payload(blob: bytes, offset: int) -> bytes:
    if offset < 0 or offset + 8 > len(blob):
        raise RefusedByReader(f"skippable frame header out of bounds at {offset}")
    magic, size = struct.unpack_from("<II", blob, offset)
    if not SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
        raise RefusedByReader(f"not zstd skippable magic: 0x{magic:08x}")
    if offset + 8 + size > len(blob):
        raise RefusedByReader("skippable payload out of bounds")
    return blob[offset + 8 : offset + 8 + size]


def containerd_read(blob: bytes, annotations: dict[str, str], diff_id: str) -> bytes:
    """The raw image, read frame by frame as containerd's seekable reader reads it."""
    table_offset = int(annotations[seekable.ANNOTATION_TABLE_OFFSET])
    payload = skippable_payload(blob, table_offset)
    expected = annotations.get(seekable.ANNOTATION_TABLE_DIGEST, "")
    if expected:  # optional: ReadChunkTable checks the digest only when it is given
        algo, _, hexdigest = expected.partition(":")
        if algo != "sha512":
            raise RefusedByReader(f'unsupported digest algorithm "{algo}" (only sha512 supported)')
        if hashlib.sha512(payload).hexdigest() != hexdigest:
            raise RefusedByReader("chunk table integrity check failed")
    if len(payload) < 23:
        raise RefusedByReader("failed to read chunk table header")
    magic, version, size, chunk, hash_algo, reserved = struct.unpack_from("<IIQIBH", payload)
    if magic != 0xCDE4EC67 or version != 1 or chunk == 0 or reserved != 0:
        raise RefusedByReader("bad chunk table header")
    if hash_algo not in (0, 1):
        raise RefusedByReader(f"unknown chunk table hash algo {hash_algo}")
    hash_size = {0: 0, 1: 64}[hash_algo]
    count = -(-size // chunk)
    if len(payload) != 23 + count * (8 + hash_size):
        raise RefusedByReader("chunk table payload size mismatch")
    entries = []
    for i in range(count):
        at = 23 + i * (8 + hash_size)
        (offset,) = struct.unpack_from("<Q", payload, at)
        entries.append((offset, payload[at + 8 : at + 8 + hash_size]))
    image = bytearray()
    dctx = zstandard.ZstdDecompressor()
    for i, (start, checksum) in enumerate(entries):
        end = entries[i + 1][0] if i + 1 < count else table_offset
        if start > table_offset or end > table_offset:  # FrameBounds
            raise RefusedByReader(f"chunk {i} out of bounds")
        if end <= start:  # DecodeErofsFrame
            raise RefusedByReader(f"chunk {i}: invalid frame bounds [{start}, {end})")
        frame = blob[start:end]
        if checksum and hashlib.sha512(frame).digest() != checksum:
            raise RefusedByReader("frame checksum mismatch (SHA-512)")
        image += dctx.decompressobj().decompress(frame)
    if "sha256:" + hashlib.sha256(image).hexdigest() != diff_id:
        raise RefusedByReader("decoded bytes do not hash to the diff_id")
    return bytes(image)
