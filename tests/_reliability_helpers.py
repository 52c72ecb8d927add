"""Shared machinery of the reliability tests, the fuzzers and the README report.

Three things live here so that the tests, ``tests/fuzz/fuzz_decode.py`` and
``tests/reliability_report.py`` all judge the decoder by the same rules:

* **seeds**: a real ``mkfs.erofs`` image wrapped every way the project
  supports (zstd single frame, zstd chunked with a chunk table, gzip single
  and multi-member, raw) plus a real tar on the shared tar routes;
* **mutators**: bit flips, truncation at every framing boundary, spliced
  frames, forged skippable frames and chunk tables, forged superblocks;
* **the oracle**: strict reference decoders written independently of the
  product (stdlib ``zlib``, libzstd's own frame decoder, identity for raw)
  and an independent superblock check. A decode may succeed only if a strict
  reference decoder accepts the same bytes, the output equals what it
  decodes to, and that output is a sound EROFS image (or, on the shared
  route, a tar). Any other outcome must be a ``DataError`` with one line.

The processor itself is started by ``tests.processor`` (``run_decoder`` adds
the address-space cap and the ``Outcome``). Nothing imitates the format:
every image comes from real ``mkfs.erofs``.
"""

from __future__ import annotations

import io
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # standalone use (fuzz harness, report script)
    sys.path.insert(0, str(ROOT))

from stream_processor import mediatypes  # noqa: E402
from tests.processor import AS_LIMIT, processor_env, run_cli  # noqa: E402

ZSTD_ROUTE = mediatypes.EROFS_LAYER_ZSTD
GZIP_ROUTE = mediatypes.EROFS_LAYER_GZIP
RAW_ROUTE = mediatypes.EROFS_LAYER
TAR_ZSTD_ROUTE = mediatypes.OCI_LAYER_TAR_ZSTD
TAR_GZIP_ROUTE = mediatypes.OCI_LAYER_TAR_GZIP
SHARED_ROUTES = frozenset({TAR_ZSTD_ROUTE, TAR_GZIP_ROUTE})

EXIT_OK, EXIT_DATA, EXIT_IO, EXIT_SIGPIPE, EXIT_SIGTERM = 0, 65, 74, 141, 143
SUBPROCESS_TIMEOUT = 30.0

SKIPPABLE_TABLE_MAGIC = 0x184D2A50
CHUNK_TABLE_MAGIC = 0xCDE4EC67
CHUNK_HEADER = struct.Struct("<IIQIBH")  # 23 bytes, docs/seekable.md
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SB_OFFSET = 1024
EROFS_MAGIC = b"\xe2\xe1\xf5\xe0"


# --------------------------------------------------------------------------- seeds


def make_image(workdir: Path, scale: int = 1) -> bytes:
    """A real EROFS image of the shared sample tree, from ``mkfs.erofs``."""
    from tests.conftest import make_tree, mkfs_erofs

    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"sample{scale}.erofs"
    if not image.exists():
        tree = workdir / f"tree{scale}"
        if not tree.exists():
            make_tree(tree, scale)
        mkfs_erofs(tree, image)
    return image.read_bytes()


@dataclass(frozen=True)
class Layers:
    """Layers that keep the decoder busy long enough to meet a fault (faults, contract)."""

    image: bytes  # a raw mkfs.erofs image
    zstd: bytes  # that image as one zstd frame
    padded_zstd: bytes  # the image + 256 MiB of zeros (output flows long before the end)
    many_frames: bytes  # the image + 2 GiB of zeros as 64 frames of 32 MiB (parallel path)


def make_layers(work: Path) -> Layers:
    image = make_image(work)
    comp = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    padded = comp.compress(image) + b"".join(comp.compress(bytes(1 << 24)) for _ in range(16))
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    frame = 32 << 20
    many = cctx.compress(image + bytes(frame - len(image))) + cctx.compress(bytes(frame)) * 63
    return Layers(image, zstd_frame(image), padded + comp.flush(), many)


def make_tar(workdir: Path) -> bytes:
    """A real tar layer (ustar, made by ``tarfile``) of a small tree."""
    from tests.conftest import make_tree

    tree = workdir / "tartree"
    if not tree.exists():
        make_tree(tree)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(str(tree), arcname=".")
    return buf.getvalue()


def zstd_frame(data: bytes, level: int = 3) -> bytes:
    """One zstd frame with content size and checksum, as ``zstd`` writes it."""
    return zstandard.ZstdCompressor(
        level=level, write_checksum=True, write_content_size=True
    ).compress(data)


def skippable(payload: bytes, magic: int = SKIPPABLE_TABLE_MAGIC, size: int | None = None) -> bytes:
    """A zstd skippable frame; ``size`` may lie about the payload length."""
    declared = len(payload) if size is None else size
    return struct.pack("<II", magic, declared & 0xFFFFFFFF) + payload


def chunk_table(
    image_size: int,
    chunk_size: int,
    offsets: Sequence[int],
    hashes: Sequence[bytes] | None = None,
    *,
    version: int = 1,
) -> bytes:
    """The chunk-table payload of docs/seekable.md (header + entries)."""
    algo = 1 if hashes is not None else 0
    out = [CHUNK_HEADER.pack(CHUNK_TABLE_MAGIC, version, image_size, chunk_size, algo, 0)]
    for i, off in enumerate(offsets):
        out.append(struct.pack("<Q", off & 0xFFFFFFFFFFFFFFFF))
        if hashes is not None:
            out.append(hashes[i])
    return b"".join(out)


def chunked_layer(image: bytes, chunk_size: int = 64 * 1024) -> bytes:
    """A seekable layer made by the product's own packer (issue 4's ``pack_image``).

    Falls back to building the docs/seekable.md layout directly (SHA-512
    per frame) where the packer refuses the input, e.g. a forged superblock.
    """
    from stream_processor.errors import ProcessorError
    from stream_processor.mediatypes import Compression
    from stream_processor.pack import pack_image

    out = io.BytesIO()
    try:
        pack_image(io.BytesIO(image), out, compression=Compression.ZSTD, chunk_size=chunk_size)
        return out.getvalue()
    except ProcessorError:
        pass
    import hashlib

    frames, offsets, hashes = [], [], []
    pos = 0
    for start in range(0, len(image), chunk_size):
        frame = zstd_frame(image[start : start + chunk_size])
        offsets.append(pos)
        hashes.append(hashlib.sha512(frame).digest())
        frames.append(frame)
        pos += len(frame)
    return b"".join(frames) + skippable(chunk_table(len(image), chunk_size, offsets, hashes))


def gzip_member(data: bytes, level: int = 6) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


@dataclass(frozen=True)
class Seed:
    """A valid layer, the route it is sent on, and the exact output expected."""

    name: str
    media_type: str | None
    data: bytes
    expected: bytes

    @property
    def compression(self) -> str:
        return detect(self.data)


def build_seeds(image: bytes, tar: bytes | None = None) -> list[Seed]:
    """Every wrapping the project supports, on its own route and on detection."""
    third = len(image) // 3
    seeds = [
        Seed("zstd", ZSTD_ROUTE, zstd_frame(image), image),
        Seed("zstd-chunked", ZSTD_ROUTE, chunked_layer(image), image),
        Seed("gzip", GZIP_ROUTE, gzip_member(image), image),
        Seed(
            "gzip-multi",
            GZIP_ROUTE,
            b"".join(
                gzip_member(part)
                for part in (image[:third], image[third : 2 * third], image[2 * third :])
            ),
            image,
        ),
        Seed("raw", RAW_ROUTE, image, image),
        Seed("detect-zstd", None, zstd_frame(image), image),
        Seed("tar+zstd-erofs", TAR_ZSTD_ROUTE, zstd_frame(image), image),
        Seed("tar+gzip-erofs", TAR_GZIP_ROUTE, gzip_member(image), image),
    ]
    if tar is not None:
        seeds += [
            Seed("tar+zstd-tar", TAR_ZSTD_ROUTE, zstd_frame(tar), tar),
            Seed("tar+gzip-tar", TAR_GZIP_ROUTE, gzip_member(tar), tar),
        ]
    return seeds


# ----------------------------------------------------------------------- framing


def detect(data: bytes) -> str:
    """zstd / gzip / none, by the first bytes (the product's rule, restated)."""
    if len(data) >= 4:
        magic = int.from_bytes(data[:4], "little")
        if data[:4] == ZSTD_MAGIC or (magic & 0xFFFFFFF0) == 0x184D2A50:
            return "zstd"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    return "none"


@dataclass
class Frame:
    """One zstd frame or skippable frame, or one gzip member, by byte range."""

    start: int
    end: int
    kind: str  # "zstd", "skippable", "gzip"
    inner: list[int] = field(default_factory=list)  # block headers, checksum, trailer offsets


def zstd_frames(data: bytes) -> list[Frame]:
    """Walk a valid zstd stream: every frame with its block-header offsets."""
    frames = []
    pos = 0
    while pos < len(data):
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if (magic & 0xFFFFFFF0) == 0x184D2A50:
            size = int.from_bytes(data[pos + 4 : pos + 8], "little")
            frames.append(Frame(pos, pos + 8 + size, "skippable", [pos + 4, pos + 8]))
            pos += 8 + size
            continue
        params = zstandard.get_frame_parameters(data[pos : pos + 18])
        cur = pos + zstandard.frame_header_size(data[pos : pos + 18])
        inner = [pos + 4, cur]
        while True:
            value = int.from_bytes(data[cur : cur + 3], "little")
            inner.append(cur)
            btype, bsize = (value >> 1) & 3, value >> 3
            cur += 3 + (1 if btype == 1 else bsize)
            if value & 1:
                break
        if params.has_checksum:
            inner.append(cur)
            cur += 4
        frames.append(Frame(pos, cur, "zstd", inner))
        pos = cur
    return frames


def gzip_members(data: bytes) -> list[Frame]:
    """Walk a valid gzip stream: every member with its header and trailer offsets."""
    members = []
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        members.append(Frame(pos, end, "gzip", [pos + 2, pos + 10, end - 8, end - 4]))
        pos = end
    return members


def boundaries(data: bytes) -> list[int]:
    """Every offset where a framing structure starts or ends (for truncation)."""
    kind = detect(data)
    points: set[int] = {0, 1, len(data) - 1}
    if kind == "zstd":
        for f in zstd_frames(data):
            points.update((f.start, f.end, f.start + 4, *f.inner))
    elif kind == "gzip":
        for f in gzip_members(data):
            points.update((f.start, f.end, *f.inner))
    else:
        points.update((SB_OFFSET, SB_OFFSET + 4, SB_OFFSET + 128, 4096, len(data) - 4096))
    return sorted(p for p in points if 0 <= p < len(data))


def degenerate_layers(image: bytes, count: int) -> dict[str, tuple[str, bytes]]:
    """Valid but pathological framing: ``count`` empty frames/members/skippable frames.

    Legal per the zstd and gzip formats, and costly per input byte: the
    decoder must stay correct and its time linear in the count.
    """
    empty = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(b"")
    return {
        "empty zstd frames after the image": (ZSTD_ROUTE, zstd_frame(image) + empty * count),
        "empty zstd frames before the image": (ZSTD_ROUTE, empty * count + zstd_frame(image)),
        "empty skippable frames": (
            ZSTD_ROUTE,
            zstd_frame(image) + struct.pack("<II", 0x184D2A51, 0) * count,
        ),
        "empty gzip members": (GZIP_ROUTE, gzip_member(image) + gzip_member(b"") * count),
    }


GZIP_HEADER_FORGERIES = 8  # how many cases gzip_header_forgeries returns


def gzip_header_forgeries(image: bytes) -> dict[str, tuple[bytes, bool]]:
    """gzip members with hostile or unusual headers: name -> (layer, must decode).

    The optional FEXTRA/FNAME/FCOMMENT fields have no length limit in the
    format; a decoder that buffered them would be a memory bomb.
    """
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = raw.compress(image) + raw.flush()
    trailer = struct.pack("<II", zlib.crc32(image), len(image) & 0xFFFFFFFF)

    def header(flags: int, method: int = 8) -> bytes:
        return bytes([0x1F, 0x8B, method, flags]) + b"\0\0\0\0\0\x03"

    extra = b"EX" + struct.pack("<H", 4) + b"data"
    fields = struct.pack("<H", len(extra)) + extra + b"layer.erofs\0" + b"a comment\0"
    return {
        "FEXTRA+FNAME+FCOMMENT, all valid": (header(0x1C) + fields + body + trailer, True),
        "FNAME never terminated (600 MiB)": (header(0x08) + b"A" * (600 << 20), False),
        "FCOMMENT never terminated (64 MiB)": (header(0x10) + b"C" * (64 << 20), False),
        "FEXTRA of 65535 bytes, cut short": (header(0x04) + b"\xff\xff" + b"B" * 100, False),
        "FHCRC that does not match": (header(0x02) + b"\0\0" + body + trailer, False),
        "reserved flag bits": (header(0xE0) + body + trailer, False),
        "compression method 7": (header(0x00, method=7) + body + trailer, False),
        "ISIZE off by 2^32 - 1": (
            header(0) + body + struct.pack("<II", zlib.crc32(image), (len(image) - 1) % 2**32),
            False,
        ),
    }


# ---------------------------------------------------------------------- mutators


Mutator = Callable[[Seed, random.Random], bytes]


def bit_flip(seed: Seed, rng: random.Random) -> bytes:
    data = bytearray(seed.data)
    for _ in range(rng.choice((1, 1, 2, 8))):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(seed: Seed, rng: random.Random) -> bytes:
    cut = rng.choice(boundaries(seed.data))
    return seed.data[: cut + rng.choice((-1, 0, 0, 1))]


def splice(seed: Seed, rng: random.Random) -> bytes:
    """Drop, duplicate, swap or reorder whole frames/members, or splice in another seed's."""
    kind = detect(seed.data)
    frames = (
        zstd_frames(seed.data)
        if kind == "zstd"
        else gzip_members(seed.data)
        if kind == "gzip"
        else []
    )
    if len(frames) < 2:
        # One frame: cut it in two at a block boundary and duplicate a piece.
        points = boundaries(seed.data)
        a = rng.choice(points)
        return seed.data[:a] + seed.data[a:] + seed.data[a : a + rng.randrange(1, 4096)]
    parts = [seed.data[f.start : f.end] for f in frames]
    op = rng.choice(("drop", "dup", "swap", "shuffle", "reverse"))
    i = rng.randrange(len(parts))
    if op == "drop":
        del parts[i]
    elif op == "dup":
        parts.insert(i, parts[i])
    elif op == "swap":
        j = rng.randrange(len(parts))
        parts[i], parts[j] = parts[j], parts[i]
    elif op == "shuffle":
        rng.shuffle(parts)
    else:
        parts.reverse()
    return b"".join(parts)


HOSTILE_SIZES = (0, 1, 7, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF)
HOSTILE_U64 = (0, 1, 1 << 31, 1 << 32, 1 << 63, (1 << 64) - 1, (1 << 64) - 4096)


def forged_skippable(seed: Seed, rng: random.Random) -> bytes:
    """A skippable frame whose size lies (huge, negative-looking, past the end)."""
    if seed.compression != "zstd":
        return seed.data + skippable(b"x" * rng.randrange(16), size=rng.choice(HOSTILE_SIZES))
    frames = zstd_frames(seed.data)
    at = rng.choice([f.start for f in frames] + [len(seed.data)])
    magic = 0x184D2A50 + rng.randrange(16)
    payload = os.urandom(rng.choice((0, 3, 23, 100)))
    frame = skippable(payload, magic=magic, size=rng.choice((*HOSTILE_SIZES, len(payload) + 1)))
    return seed.data[:at] + frame + seed.data[at:]


def forged_chunk_table(seed: Seed, rng: random.Random) -> bytes:
    """A chunk table with hostile sizes/offsets, replacing or added to the real one."""
    if seed.compression != "zstd":
        return forged_skippable(seed, rng)
    frames = [f for f in zstd_frames(seed.data) if f.kind == "zstd"]
    offsets: list[int] = [f.start for f in frames]
    image_size = len(seed.expected)
    chunk = 64 * 1024
    hashes: list[bytes] | None = None
    choice = rng.randrange(9)
    if choice == 0:
        image_size = rng.choice(HOSTILE_U64)
    elif choice == 1:
        chunk = rng.choice((0, 1, 4095, 0x80000000, 0xFFFFFFFF))
    elif choice == 2:
        offsets = [rng.choice(HOSTILE_U64) for _ in offsets]
    elif choice == 3:
        offsets = offsets[: rng.randrange(len(offsets) + 1)]
    elif choice == 4:
        offsets = offsets * rng.choice((2, 50))
    elif choice == 5:
        hashes = [os.urandom(64) for _ in offsets]
    elif choice == 6:
        offsets = list(reversed(offsets))
    table = chunk_table(
        image_size, chunk, offsets, hashes, version=rng.choice((1, 1, 1, 2, 0xFFFFFFFF))
    )
    if choice == 7:
        table = table[: rng.randrange(len(table))]
    elif choice == 8:
        table = table + os.urandom(rng.randrange(1, 64))
    body = b"".join(seed.data[f.start : f.end] for f in frames)
    declared = None if rng.random() < 0.7 else rng.choice(HOSTILE_SIZES)
    return body + skippable(table, size=declared)


SUPERBLOCK_FORGERIES: tuple[tuple[str, int, str, tuple[int, ...]], ...] = (
    ("blkszbits", 0x0C, "<B", (0, 8, 13, 16, 17, 31, 40, 63, 255)),
    ("sb_extslots", 0x0D, "<B", (1, 7, 8, 24, 255)),
    ("blocks", 0x24, "<I", (0, 1, 0x7FFFFFFF, 0xFFFFFFFF)),
    ("feature_incompat", 0x50, "<I", (0x200, 0x80000000, 0xFFFFFFFF)),
    ("feature_compat", 0x08, "<I", (0, 0xFFFFFFFE)),  # checksum flag off / odd bits
    ("inodes", 0x10, "<Q", (0, (1 << 64) - 1)),
)


def forge_superblock(image: bytes, field_at: int, fmt: str, value: int, seal: bool = True) -> bytes:
    """``image`` with one superblock field set to ``value``, CRC32C recomputed if ``seal``."""
    forged = bytearray(image)
    struct.pack_into(fmt, forged, SB_OFFSET + field_at, value)
    if seal:
        reseal(forged)
    return bytes(forged)


def forged_superblock(seed: Seed, rng: random.Random) -> bytes:
    """A superblock field set to a hostile value, checksum recomputed, then re-wrapped."""
    if seed.expected[SB_OFFSET : SB_OFFSET + 4] != EROFS_MAGIC:
        return bit_flip(seed, rng)
    _name, field_at, fmt, values = rng.choice(SUPERBLOCK_FORGERIES)
    forged = forge_superblock(seed.expected, field_at, fmt, rng.choice(values), rng.random() < 0.8)
    return rewrap(seed, forged)


def reseal(image: bytearray) -> None:
    """Recompute the superblock CRC32C so a forged field survives the checksum."""
    bits = image[SB_OFFSET + 0x0C]
    block = 1 << bits if bits < 40 else 4096
    end = SB_OFFSET + block if block <= SB_OFFSET else min(block, len(image))
    region = bytearray(image[SB_OFFSET:end])
    region[4:8] = b"\0\0\0\0"
    struct.pack_into("<I", image, SB_OFFSET + 4, crc32c(bytes(region)))


def rewrap(seed: Seed, payload: bytes) -> bytes:
    """Wrap ``payload`` the way ``seed`` is wrapped (single frame/member)."""
    kind = seed.compression
    if kind == "zstd":
        if "chunked" in seed.name:
            return chunked_layer(payload)
        return zstd_frame(payload)
    if kind == "gzip":
        return gzip_member(payload)
    return payload


MUTATORS: dict[str, Mutator] = {
    "bit flips": bit_flip,
    "truncation at framing boundaries": truncate,
    "spliced frames/members": splice,
    "forged skippable frames": forged_skippable,
    "forged chunk tables": forged_chunk_table,
    "forged superblocks": forged_superblock,
}


# ------------------------------------------------------------------------ oracle


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC32C, bitwise (independent of the product's table version). No final xor."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc


def erofs_problem(out: bytes, page_shift: int = 12) -> str | None:
    """What is wrong with an EROFS image's superblock, checked independently; None if nothing."""
    if out[SB_OFFSET : SB_OFFSET + 4] != EROFS_MAGIC:
        return "no EROFS magic"
    sb = out[SB_OFFSET : SB_OFFSET + 128]
    if len(sb) < 128:
        return "superblock cut short"
    compat, bits, ext = struct.unpack_from("<IBB", sb, 8)
    (blocks,) = struct.unpack_from("<I", sb, 0x24)
    (incompat,) = struct.unpack_from("<I", sb, 0x50)
    if not 9 <= bits <= page_shift:
        return f"block size 2^{bits}"
    block = 1 << bits
    if incompat & ~0x1FF:
        return "unknown incompat"
    if blocks == 0:
        return "0 blocks"
    if block > SB_OFFSET and SB_OFFSET + 128 + 16 * ext > block:
        return "superblock does not fit"
    if compat & 1:
        end = SB_OFFSET + block if block <= SB_OFFSET else block
        region = bytearray(out[SB_OFFSET:end])
        region[4:8] = b"\0\0\0\0"
        if len(region) < end - SB_OFFSET or crc32c(bytes(region)) != int.from_bytes(
            sb[4:8], "little"
        ):
            return "bad checksum"
    if len(out) < blocks << bits:
        return "shorter than its superblock says"
    return None


def tar_start(out: bytes) -> bool:
    """A tar archive's first block: a header with a valid checksum, or end-of-archive."""
    block = out[:512]
    if len(block) < 512:
        return False
    if block.count(0) == 512:
        # An empty archive: only zeros may follow (tar writers pad with zeros).
        return out.count(0) == len(out)
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"x", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 256 + sum(block[156:])


class Rejected(Exception):
    """The strict reference decoder refuses the stream."""


def reference_decode(data: bytes, declared: str | None, limit: int) -> bytes:
    """Decode strictly with code independent of the product; raise ``Rejected``."""
    kind = detect(data)
    if declared is not None and declared != kind:
        raise Rejected(f"declared {declared}, found {kind}")
    if not data:
        raise Rejected("empty")
    if kind == "none":
        return data
    if kind == "gzip":
        return _ref_gzip(data, limit)
    return _ref_zstd(data, limit)


def _ref_gzip(data: bytes, limit: int) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos : pos + 2] != b"\x1f\x8b":
            raise Rejected("trailing garbage")
        d = zlib.decompressobj(31)
        buf = data[pos:]
        while buf and not d.eof:
            out += d.decompress(buf, 1 << 20)
            buf = d.unconsumed_tail
            if len(out) > limit:
                raise Rejected("over limit")
        if not d.eof:
            raise Rejected("truncated member")
        pos = len(data) - len(d.unused_data)
    return bytes(out)


def _ref_zstd(data: bytes, limit: int) -> bytes:
    out = bytearray()
    pos = 0
    frames = 0
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
    while pos < len(data):
        if len(data) - pos < 4:
            raise Rejected("stray bytes")
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if (magic & 0xFFFFFFF0) == 0x184D2A50:
            if len(data) - pos < 8:
                raise Rejected("truncated skippable header")
            size = int.from_bytes(data[pos + 4 : pos + 8], "little")
            if pos + 8 + size > len(data):
                raise Rejected("truncated skippable frame")
            pos += 8 + size
            continue
        if data[pos : pos + 4] != ZSTD_MAGIC:
            raise Rejected("not a frame")
        d = dctx.decompressobj()
        step = 64  # small feeds bound the output of each call
        cur = pos
        try:
            while not d.eof and cur < len(data):
                piece = data[cur : cur + step]
                out += d.decompress(piece)
                cur += len(piece)
                if len(out) > limit:
                    raise Rejected("over limit")
        except zstandard.ZstdError as exc:
            raise Rejected(str(exc)) from exc
        if not d.eof:
            raise Rejected("truncated frame")
        pos = cur - len(d.unused_data)
        frames += 1
    if frames == 0:
        raise Rejected("no data frame")
    return bytes(out)


def route_compression(media_type: str | None) -> str | None:
    if media_type is None:
        return None
    if media_type.endswith("zstd"):
        return "zstd"
    if media_type.endswith("gzip"):
        return "gzip"
    return "none"


def violation(
    media_type: str | None,
    data: bytes,
    ok: bool,
    output: bytes,
    message: str,
    *,
    limit: int,
    expected: bytes | None = None,
) -> str | None:
    """The property every decode must satisfy; returns what was violated, or ``None``.

    ``expected`` is the original output when ``data`` is an unmutated seed:
    then the decode must succeed with exactly that output.
    """
    if not ok:
        if expected is not None:
            return f"a valid layer was rejected: {message}"
        if not message or "\n" in message.strip():
            return f"failure message is not one line: {message!r}"
        if "internal error" in message or "Traceback" in message:
            return f"internal error instead of a data error: {message}"
        return None
    if expected is not None:
        return None if output == expected else "valid layer decoded to different bytes"
    try:
        ref = reference_decode(data, route_compression(media_type), limit)
    except Rejected as exc:
        return f"exit 0 on a stream the strict reference decoder rejects ({exc})"
    if output != ref:
        return f"output ({len(output)} bytes) differs from the reference ({len(ref)} bytes)"
    problem = erofs_problem(output)
    if problem is None:
        return None
    if media_type in SHARED_ROUTES and output[SB_OFFSET : SB_OFFSET + 4] != EROFS_MAGIC:
        return None if tar_start(output) else "exit 0 on the tar route with neither EROFS nor tar"
    return f"exit 0 on an unsound EROFS image: {problem}"


def table_frame(seed: Seed) -> bytes | None:
    """The chunk-table skippable frame of a chunked seed, as it appears in its bytes."""
    if seed.compression != "zstd":
        return None
    for f in zstd_frames(seed.data):
        magic = seed.data[f.start + 8 : f.start + 12]
        if f.kind == "skippable" and int.from_bytes(magic, "little") == CHUNK_TABLE_MAGIC:
            return seed.data[f.start : f.end]
    return None


def table_violation(
    seeds: Sequence[Seed], data: bytes, ok: bool, output: bytes, media_type: str | None = None
) -> str | None:
    """With a seed's own chunk table still in the stream, success means its exact image.

    The table pins every frame's offset and SHA-512, so spliced, dropped,
    duplicated or altered frames must be refused, not decoded into a
    different image.
    """
    if not ok or detect(data) != "zstd" or route_compression(media_type) not in (None, "zstd"):
        return None  # raw or gzip data may carry the table's bytes as plain content
    for seed in seeds:
        table = table_frame(seed)
        if table is not None and table in data and output != seed.expected:
            return f"exit 0 with {seed.name}'s chunk table, but the output is not its image"
    return None


# ---------------------------------------------------------------- running decodes


@dataclass
class FaultResult:
    """What one fault run showed; ``problem`` is ``None`` when the behaviour is right."""

    exit_code: int | None
    seconds: float
    stderr: str
    problem: str | None = None


@dataclass
class Outcome:
    """How one decode ended."""

    exit_code: int
    stdout: bytes
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def decode_in_process(
    data: bytes, media_type: str | None, limit: int, threads: int = 1
) -> tuple[bool, bytes, str]:
    """Run the product's ``decode`` on memfds (fast, for fuzzing): (ok, output, message).

    Only ``DataError`` counts as a clean rejection; anything else propagates
    so the fuzzer reports it as a crash. Frame hashes are verified (the
    strictest mode, ``--verify-frame-hashes``), so ``table_violation`` holds;
    the CLI runs fuzz the default mode, held to every other rule.
    """
    from stream_processor.decode import DecodeOptions, DecodeResult, decode
    from stream_processor.errors import DataError

    in_fd = os.memfd_create("fuzz-in")
    out_fd = os.memfd_create("fuzz-out")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(in_fd, view) :]
        os.lseek(in_fd, 0, os.SEEK_SET)
        try:
            options = DecodeOptions(media_type, limit, threads=threads, verify_frame_hashes=True)
            decode(in_fd, out_fd, options, DecodeResult(media_type))
        except DataError as exc:
            return False, b"", exc.message
        size = os.lseek(out_fd, 0, os.SEEK_END)
        os.lseek(out_fd, 0, os.SEEK_SET)
        return True, _read_exact(out_fd, size), ""
    finally:
        os.close(in_fd)
        os.close(out_fd)


def _read_exact(fd: int, size: int) -> bytes:
    parts = []
    while size > 0:
        got = os.read(fd, min(size, 1 << 20))
        if not got:
            break
        parts.append(got)
        size -= len(got)
    return b"".join(parts)


def fuzz_rss_limit_mb(budget_mb: int = 1024) -> int:
    """``-rss_limit_mb`` for a fuzzer started from this process.

    Linux carries a process's peak RSS across fork and exec (``ru_maxrss`` of
    the child starts at the parent's resident size), so a fuzzer started from
    a pytest process that once held a 768 MiB test input reports that peak as
    its own and libFuzzer declares an out-of-memory at once. The limit is the
    budget on top of what this process has already peaked at.
    """
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return inherited + budget_mb


def run_atheris(
    corpus_dir: Path, artifacts: Path, seconds: int, work: Path, *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """The coverage-guided fuzzer (``tests/fuzz/fuzz_decode.py``) for ``seconds`` on a corpus.

    Findings land in ``artifacts``; ``work`` is where it builds its seed image.
    """
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz" / "fuzz_decode.py"),
            f"-max_total_time={seconds}",
            f"-artifact_prefix={artifacts}/",
            f"-rss_limit_mb={fuzz_rss_limit_mb()}",
            "-print_final_stats=1",
            str(corpus_dir),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=processor_env({"EROFS_SP_FUZZ_WORK": str(work)}),
        cwd=ROOT,
    )


def decoder_args(media_type: str | None, *args: str) -> list[str]:
    """The decoder's arguments, the media type given as ``--media-type`` when there is one."""
    return [*args, "--media-type", media_type] if media_type is not None else list(args)


def run_decoder(
    data: bytes,
    media_type: str | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = SUBPROCESS_TIMEOUT,
    as_limit: int = AS_LIMIT,
    stdout: int = subprocess.PIPE,
) -> Outcome:
    """Decode ``data`` through the CLI under an address-space limit and a timeout.

    ``stdout=subprocess.DEVNULL`` discards a large output instead of keeping it.
    """
    started = time.monotonic()
    proc = run_cli(
        decoder_args(media_type, *args),
        data,
        env,
        timeout,
        as_limit=as_limit,
        stdout=stdout,
    )
    return Outcome(
        proc.returncode,
        proc.stdout or b"",
        proc.stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )


def cli_violation(
    outcome: Outcome, media_type: str | None, data: bytes, expected: bytes | None
) -> str | None:
    """The CLI-level property: exit 0 and a right output, or exit 65 and one stderr line."""
    if "Traceback" in outcome.stderr:
        return "traceback on stderr"
    if outcome.exit_code == EXIT_OK:
        if outcome.stderr_lines:
            return f"exit 0 with stderr: {outcome.stderr!r}"
        return violation(
            media_type, data, True, outcome.stdout, "", limit=64 << 20, expected=expected
        )
    if outcome.exit_code != EXIT_DATA:
        return f"exit {outcome.exit_code} (want 65): {outcome.stderr!r}"
    if len(outcome.stderr_lines) != 1:
        return f"{len(outcome.stderr_lines)} stderr lines: {outcome.stderr!r}"
    if expected is not None:
        return f"a valid layer was rejected: {outcome.stderr!r}"
    if outcome.stdout and erofs_problem(outcome.stdout) is None:
        return "a rejected decode still wrote a complete-looking image"
    return None


def mutated_cases(
    seeds: Sequence[Seed], per_class: int, rng_seed: int = 6
) -> Iterator[tuple[str, Seed, bytes]]:
    """``per_class`` mutated inputs per mutator class, cycling over the seeds."""
    rng = random.Random(rng_seed)
    for name, mutate in MUTATORS.items():
        for i in range(per_class):
            seed = seeds[i % len(seeds)]
            yield name, seed, mutate(seed, rng)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
