"""Producing layers: a raw EROFS image (or a directory) in, a +zstd/+gzip layer blob out.

The image is read once, sequentially, and checked with the same superblock
validator the decoder uses; its SHA-256 (the diffID) and the blob's SHA-256
(the digest) are computed on the way, so a manifest can be written without
reading anything twice.

The default zstd output is the seekable layout of ``seekable``: one frame
per chunk (content size and checksum in every frame header) followed by the
chunk-table skippable frame, and with ``dm_verity_block_size`` the dm-verity
frame of ``dmverity`` after it (docs/seekable.md). Chunks are compressed
(and, for dm-verity, their blocks hashed) on ``threads`` worker threads
(libzstd and hashlib release the GIL), at most ``threads + 1`` chunks in
flight, and written in order. Any stock ``zstd -d`` decodes the result.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from stream_processor import dmverity, mediatypes, seekable, superblock
from stream_processor.errors import DataError, InputOutputError, UsageError
from stream_processor.mediatypes import Compression
from stream_processor.sizes import human, of_total
from stream_processor.validator import check_complete, describe

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_ZSTD_LEVEL = 3
PLAIN_PIECE = 1 << 20  # read size when no chunking is asked for
HEAD_BYTES = 64 * 1024  # the largest EROFS block: enough to validate any superblock


def chunk_size_option(
    compression: Compression, chunk_size: int | None, no_chunk_table: bool
) -> int | None:
    """The chunk size ``pack_image`` should use for ``--chunk-size`` / ``--no-chunk-table``.

    Shared by ``pack`` and ``convert``: chunking applies to zstd only, and the
    two options exclude each other. ``None`` means a plain, table-less stream.
    """
    if compression is not Compression.ZSTD:
        if chunk_size is not None or no_chunk_table:
            raise UsageError("--chunk-size and --no-chunk-table apply to zstd only")
        return None
    if no_chunk_table:
        if chunk_size is not None:
            raise UsageError("--chunk-size and --no-chunk-table exclude each other")
        return None
    return int(chunk_size) if chunk_size is not None else DEFAULT_CHUNK_SIZE


def add_dm_verity_arguments(parser: Any) -> None:
    """``--dm-verity`` and ``--dm-verity-block-size``, shared by ``pack`` and ``convert``."""
    parser.add_argument(
        "--dm-verity",
        action="store_true",
        help="append a dm-verity hash tree (sha512) after the chunk table, as containerd's "
        "seekable layout does; adds the dmverity.offset and root_digest annotations",
    )
    parser.add_argument(
        "--dm-verity-block-size",
        type=int,
        metavar="BYTES",
        help="dm-verity data and hash block size: "
        + ", ".join(map(str, dmverity.BLOCK_SIZES))
        + f" (default {dmverity.DEFAULT_BLOCK_SIZE}); implies --dm-verity",
    )


def dm_verity_option(args: Any, chunk_size: int | None) -> int | None:
    """The dm-verity block size for ``pack_image``, or None without ``--dm-verity``.

    ``chunk_size`` is what ``chunk_size_option`` gave: dm-verity needs the
    seekable zstd layout, so None (gzip, none, ``--no-chunk-table``) is refused.
    """
    size = args.dm_verity_block_size
    if size is None and not args.dm_verity:
        return None
    if chunk_size is None:
        raise UsageError(_VERITY_NEEDS_TABLE)
    try:
        return dmverity.check_block_size(size or dmverity.DEFAULT_BLOCK_SIZE)
    except ValueError as exc:
        raise UsageError(f"--dm-verity-block-size: {exc}") from None


_VERITY_NEEDS_TABLE = (
    "--dm-verity needs the seekable zstd layout (not gzip, none or --no-chunk-table)"
)


@dataclass(frozen=True)
class PackResult:
    """What a manifest needs to reference the blob that was written."""

    media_type: str
    digest: str
    size: int
    diff_id: str
    image_size: int
    chunk_size: int | None
    annotations: dict[str, str] = field(default_factory=dict)


class PackProgress:
    """The live line of ``pack`` on a terminal: bytes in, bytes out, rate.

    Redrawn at most every ``REFRESH_S`` seconds, on stderr, and only when
    ``terminal`` (a pipe or a log file gets nothing but the final summary).
    """

    REFRESH_S = 0.5

    def __init__(
        self,
        stream: TextIO,
        total: int | None,
        *,
        terminal: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._total = total
        self._terminal = terminal
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self.shown = False

    def line(self, bytes_in: int, bytes_out: int) -> str:
        """The text of the live line for these counts (no redraw)."""
        elapsed = max(self._clock() - self._started, 1e-9)
        read = of_total(bytes_in, self._total) if self._total else human(bytes_in)
        return f"packing: read {read}, wrote {human(bytes_out)}, {human(int(bytes_in / elapsed))}/s"

    def update(self, bytes_in: int, bytes_out: int) -> None:
        if not self._terminal:
            return
        now = self._clock()
        if now - self._last < self.REFRESH_S:
            return
        self._last = now
        self._stream.write("\r" + self.line(bytes_in, bytes_out) + "\x1b[K")
        self._stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self.shown = False


class _HashingWriter:
    """Writes to ``out`` while computing the blob's SHA-256 and size."""

    def __init__(self, out: BinaryIO, on_write: Callable[[int], None] | None = None) -> None:
        self._out = out
        self._on_write = on_write
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self._out.write(data)
        except OSError as exc:
            raise InputOutputError.from_os_error("cannot write the layer", exc) from exc
        self.sha256.update(data)
        self.size += len(data)
        if self._on_write is not None:
            self._on_write(self.size)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def _read_exact(image: BinaryIO, n: int) -> bytes:
    parts = []
    left = n
    while left:
        try:
            data = image.read(left)
        except OSError as exc:
            raise InputOutputError.from_os_error("cannot read the image", exc) from exc
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


class _ImageReader:
    """The image in fixed-size pieces; validates the head, counts and hashes everything."""

    def __init__(self, image: BinaryIO) -> None:
        self._image = image
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.superblock: superblock.Superblock | None = None

    def pieces(self, size: int) -> Iterator[bytes]:
        want = size * -(-HEAD_BYTES // size)  # whole pieces: only the last may be short
        pending = _read_exact(self._image, want)
        if not pending:
            raise DataError("the image is empty")
        if not superblock.has_magic(pending):
            raise DataError(f"expected an EROFS image, got: {describe(pending[:4096])}")
        sb = superblock.validate(pending)
        self.superblock = sb
        while pending:
            for at in range(0, len(pending), size):
                piece = pending[at : at + size] if len(pending) > size else pending
                self.sha256.update(piece)
                self.size += len(piece)
                yield piece
            if len(pending) < want:
                break
            want = size
            pending = _read_exact(self._image, want)
        check_complete(self.size, sb)


def _ordered(
    pool: ThreadPoolExecutor | None,
    work: Callable[[bytes], Any],
    items: Iterator[bytes],
    depth: int,
) -> Iterator[Any]:
    """``work(item)`` for each item, on ``pool`` with ``depth`` in flight, results in order."""
    if pool is None:
        for item in items:
            yield work(item)
        return
    inflight: deque[Future[Any]] = deque()
    try:
        for item in items:
            inflight.append(pool.submit(work, item))
            if len(inflight) > depth:
                yield inflight.popleft().result()
        while inflight:
            yield inflight.popleft().result()
    finally:
        for fut in inflight:
            fut.cancel()


def _pack_zstd_chunked(
    reader: _ImageReader,
    out: _HashingWriter,
    level: int,
    chunk_size: int,
    threads: int,
    verity_block_size: int | None = None,
) -> dict[str, str]:
    import zstandard

    local = threading.local()
    tree: dmverity.TreeBuilder | None = None
    # Workers hash the dm-verity blocks of a chunk when chunks hold whole blocks
    # (only the last chunk may be short, and its last block is zero-padded anyway).
    in_worker = verity_block_size is not None and chunk_size % verity_block_size == 0

    def compress(chunk: bytes) -> tuple[bytes, bytes, bytes | None, int]:
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
        frame = cctx.compress(chunk)
        blocks = tree.hash_blocks(chunk) if in_worker and tree is not None else None
        return frame, hashlib.sha512(frame).digest(), blocks, len(chunk)

    def pieces() -> Iterator[bytes]:
        nonlocal tree
        for piece in reader.pieces(chunk_size):
            if verity_block_size is not None and tree is None:
                tree = dmverity.TreeBuilder(dmverity.derive_salt(piece), verity_block_size)
            if tree is not None and not in_worker:
                tree.update(piece)  # in order, here: a block may straddle two chunks
            yield piece

    offsets: list[int] = []
    digests: list[bytes] = []
    # No malloc tuning here (unlike the one-layer-per-process decoder): convert
    # packs many layers in one process, where it would trade faults for fragmentation.
    pool = ThreadPoolExecutor(threads, "pack") if threads > 1 else None
    try:
        for frame, digest, blocks, length in _ordered(pool, compress, pieces(), threads):
            offsets.append(out.size)
            digests.append(digest)
            out.write(frame)
            if tree is not None and blocks is not None:
                tree.add_digests(blocks, length)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    table = seekable.build_table(reader.size, chunk_size, offsets, digests)
    table_offset = out.size
    out.write(seekable.skippable_frame(table))
    annotations = {
        seekable.ANNOTATION_TABLE_OFFSET: str(table_offset),
        seekable.ANNOTATION_TABLE_DIGEST: seekable.table_digest(table),
    }
    if tree is not None:
        annotations.update(_write_verity(tree, reader, out))
    return annotations


def _write_verity(
    tree: dmverity.TreeBuilder, reader: _ImageReader, out: _HashingWriter
) -> dict[str, str]:
    """Append the dm-verity frame; return its two annotations."""
    hashes, root = tree.finish()
    sb = dmverity.Superblock(
        version=dmverity.VERSION,
        hash_type=dmverity.HASH_TYPE,
        uuid=dmverity.derive_uuid(reader.sha256.digest()),
        hash_name=tree.hash_name,
        data_block_size=tree.block_size,
        hash_block_size=tree.block_size,
        data_blocks=tree.data_blocks,
        salt=tree.salt,
    )
    offset = out.size
    out.write(seekable.skippable_frame(dmverity.build_payload(sb, hashes)))
    return {
        seekable.ANNOTATION_VERITY_OFFSET: str(offset),
        seekable.ANNOTATION_VERITY_ROOT: dmverity.root_digest(sb, root),
    }


def _pack_zstd_plain(reader: _ImageReader, out: _HashingWriter, level: int, threads: int) -> None:
    import zstandard

    cctx = zstandard.ZstdCompressor(
        level=level, write_checksum=True, threads=threads if threads > 1 else 0
    )
    cobj = cctx.compressobj()
    for piece in reader.pieces(PLAIN_PIECE):
        data = cobj.compress(piece)
        if data:
            out.write(data)
    out.write(cobj.flush())


def _pack_gzip(reader: _ImageReader, out: _HashingWriter, level: int | None, threads: int) -> None:
    """ISA-L for levels 0..3 (the default, 2, is much faster than zlib -6: README
    "Dependencies"); zlib for 4..9."""
    if level is None or level <= 3:
        from isal import igzip_threaded  # type: ignore[import-untyped,unused-ignore]

        isal_level = 2 if level is None else level
        with igzip_threaded.open(  # type: ignore[no-untyped-call,unused-ignore]
            out, "wb", compresslevel=isal_level, threads=threads if threads > 1 else 0
        ) as gz:
            for piece in reader.pieces(PLAIN_PIECE):
                gz.write(piece)
        return
    cobj = zlib.compressobj(level, zlib.DEFLATED, 31)
    for piece in reader.pieces(PLAIN_PIECE):
        out.write(cobj.compress(piece))
    out.write(cobj.flush())


def pack_image(
    image: BinaryIO,
    out: BinaryIO,
    *,
    compression: Compression,
    level: int | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    threads: int = 1,
    dm_verity_block_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Compress the raw EROFS image read from ``image`` into ``out``.

    ``chunk_size`` applies to zstd only: a size writes the seekable layout,
    ``None`` a plain single-stream layer. gzip and none ignore it.
    ``dm_verity_block_size`` appends the dm-verity frame (chunked zstd only). Raises
    ``DataError`` if the image is not a complete, valid EROFS image (``out``
    then holds a partial blob the caller should discard). ``on_progress(read,
    written)`` is called after each write, from the calling thread.
    """
    threads = max(1, threads)
    reader = _ImageReader(image)
    writer = _HashingWriter(
        out, None if on_progress is None else lambda n: on_progress(reader.size, n)
    )
    annotations: dict[str, str] = {}
    used_chunk: int | None = None
    if dm_verity_block_size is not None:
        if compression is not Compression.ZSTD or chunk_size is None:
            raise UsageError(_VERITY_NEEDS_TABLE)
        try:
            dmverity.check_block_size(dm_verity_block_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if compression is Compression.ZSTD:
        zlevel = DEFAULT_ZSTD_LEVEL if level is None else level
        if chunk_size is not None:
            if not seekable.MIN_CHUNK_SIZE <= chunk_size <= seekable.MAX_CHUNK_SIZE:
                raise UsageError(
                    f"chunk size {chunk_size} is outside {seekable.MIN_CHUNK_SIZE}.."
                    f"{seekable.MAX_CHUNK_SIZE} bytes"
                )
            annotations = _pack_zstd_chunked(
                reader, writer, zlevel, chunk_size, threads, dm_verity_block_size
            )
            used_chunk = chunk_size
        else:
            _pack_zstd_plain(reader, writer, zlevel, threads)
    elif compression is Compression.GZIP:
        _pack_gzip(reader, writer, level, threads)
    else:
        for piece in reader.pieces(PLAIN_PIECE):
            writer.write(piece)
    writer.flush()
    return PackResult(
        media_type=mediatypes.erofs_media_type(compression),
        digest="sha256:" + writer.sha256.hexdigest(),
        size=writer.size,
        diff_id="sha256:" + reader.sha256.hexdigest(),
        image_size=reader.size,
        chunk_size=used_chunk,
        annotations=annotations,
    )


def build_image(
    directory: Path,
    image_path: Path,
    *,
    mkfs: str = "mkfs.erofs",
    uuid: str | None = None,
    timestamp: int | None = None,
) -> str:
    """Build an EROFS image of ``directory`` with ``mkfs``; return its volume UUID.

    Reproducible by default: the files' own mtimes are kept (extended inodes),
    the build time is 0, and the UUID, unless ``uuid`` is given, is derived
    from the content: ``uuid5(NAMESPACE_URL, "erofs-stream-processor:pack/" +
    sha256 of the image built with a fixed placeholder UUID)``. ``timestamp``
    (mkfs.erofs ``-T``) sets the build time and every inode's time instead.
    ``convert``'s ``dir`` builder runs ``mkfs.erofs`` the same way
    (``erofsbuild.build_from_directory``).
    """
    import uuid as uuidlib

    from stream_processor.convert.erofsbuild import build_from_directory, find_mkfs, finish_image

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    build_time = timestamp if timestamp is not None else 0
    build_from_directory(
        directory,
        image_path,
        fs_uuid=uuid or _PLACEHOLDER_UUID,
        build_time=build_time,
        mkfs=find_mkfs(mkfs),
        stamp_files=timestamp is not None,
    )
    if uuid is not None:
        return uuid
    digest = hashlib.sha256()
    with image_path.open("rb") as image:
        for piece in iter(lambda: image.read(1 << 20), b""):
            digest.update(piece)
    derived = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{UUID_PREFIX}sha256:{digest.hexdigest()}"))
    finish_image(image_path, build_time=build_time, fs_uuid=derived)
    return derived


UUID_PREFIX = "erofs-stream-processor:pack/"
_PLACEHOLDER_UUID = "00000000-0000-4000-8000-000000000000"  # replaced by the derived one
