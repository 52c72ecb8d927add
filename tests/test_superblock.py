"""Superblock parsing and validation against real mkfs.erofs images."""

from __future__ import annotations

import pytest

from stream_processor import superblock as sb
from stream_processor.errors import DataError
from tests.builders import patch_superblock
from tests.conftest import FIXED_UUID


def test_crc32c_known_vector() -> None:
    # RFC 3720 B.4: CRC32C of 32 zero bytes is 0x8A9136AA (with the final xor).
    assert sb.crc32c(b"\0" * 32) ^ 0xFFFFFFFF == 0x8A9136AA
    assert sb.crc32c(b"123456789") ^ 0xFFFFFFFF == 0xE3069283


def test_real_image_validates(erofs_bytes: bytes) -> None:
    parsed = sb.validate(erofs_bytes[:4096])
    assert parsed.has_checksum and parsed.block_size == 4096
    assert parsed.image_size == len(erofs_bytes)
    assert parsed.uuid_str == FIXED_UUID
    assert "sb_csum" in parsed.feature_names()
    assert sb.required_head(erofs_bytes) == 4096


def test_checksum_mismatch_is_named(erofs_bytes: bytes) -> None:
    bad = patch_superblock(erofs_bytes, 0x10, "<Q", 99999, fix_checksum=False)
    with pytest.raises(DataError, match="checksum mismatch"):
        sb.validate(bad)


def test_bad_magic(erofs_bytes: bytes) -> None:
    bad = bytearray(erofs_bytes)
    bad[1024] ^= 0xFF
    with pytest.raises(DataError, match="no EROFS superblock magic"):
        sb.validate(bytes(bad))


@pytest.mark.parametrize("bits", [8, 17, 30])
def test_block_size_outside_kernel_range(erofs_bytes: bytes, bits: int) -> None:
    bad = patch_superblock(erofs_bytes, 0x0C, "<B", bits, fix_checksum=False)
    with pytest.raises(DataError, match="block size"):
        sb.validate(bad, page_shift=12)


def test_unknown_incompat_feature(erofs_bytes: bytes) -> None:
    bad = patch_superblock(erofs_bytes, 0x50, "<I", 0x8000)
    with pytest.raises(DataError, match="unknown incompatible features 0x8000"):
        sb.validate(bad)


def test_superblock_must_fit_first_block(erofs_bytes: bytes) -> None:
    bad = patch_superblock(erofs_bytes, 0x0D, "<B", 255)  # 128 + 16*255 bytes > 4096 - 1024
    with pytest.raises(DataError, match="do not fit"):
        sb.validate(bad)


def test_too_short(erofs_bytes: bytes) -> None:
    with pytest.raises(DataError, match="too short"):
        sb.parse(erofs_bytes[:1100])


def test_image_without_checksum_feature_validates(erofs_bytes: bytes) -> None:
    data = patch_superblock(erofs_bytes, 0x08, "<I", 0x2, fix_checksum=False)  # MTIME only
    data = patch_superblock(data, 0x04, "<I", 0xDEADBEEF, fix_checksum=False)
    assert not sb.validate(data).has_checksum


def test_48bit_block_count_includes_its_high_bits(erofs_bytes: bytes) -> None:
    """With INCOMPAT_48BIT the 16 bits at 0x0E are the block count's top bits and the
    root nid moves to 0x70 (the kernel's erofs_fs.h); a completeness check on the low
    32 bits alone would let a truncated image of more than 16 TiB through."""
    plain = sb.parse(erofs_bytes)
    forged = patch_superblock(erofs_bytes, 0x70, "<Q", plain.root_nid, fix_checksum=False)
    forged = patch_superblock(forged, 0x0E, "<H", 1, fix_checksum=False)
    forged = patch_superblock(forged, 0x50, "<I", plain.feature_incompat | sb.INCOMPAT_48BIT)
    parsed = sb.validate(forged)
    assert parsed.blocks == plain.blocks + (1 << 32)
    assert parsed.root_nid == plain.root_nid
    assert parsed.image_size > 16 << 40
    assert "48bit" in parsed.feature_names()


def test_48bit_image_claiming_more_blocks_is_truncated_for_the_decoder(
    erofs_bytes: bytes,
) -> None:
    from stream_processor import mediatypes as mt
    from tests.processor import run_cli

    plain = sb.parse(erofs_bytes)
    forged = patch_superblock(erofs_bytes, 0x70, "<Q", plain.root_nid, fix_checksum=False)
    forged = patch_superblock(forged, 0x0E, "<H", 1, fix_checksum=False)
    forged = patch_superblock(forged, 0x50, "<I", plain.feature_incompat | sb.INCOMPAT_48BIT)
    proc = run_cli(["--media-type", mt.EROFS_LAYER], stdin=forged)
    assert proc.returncode == 65, proc.stderr
    assert b"truncated EROFS image" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert len(proc.stdout) < len(forged)  # the held-back tail never went out
