"""Converting one layer: a tar layer rebuilt as EROFS, or an EROFS layer re-wrapped.

A tar layer is read once, as a stream: blob (digest-checked) -> decompressor
-> SHA-256 of the uncompressed tar (its diff_id, checked against the image
config, and the seed of the filesystem UUID) -> one of two builders:

- ``tar`` (erofs-utils >= 1.8): ``tarmode.build_from_tar`` streams the tar
  into ``mkfs.erofs --tar=f --aufs``; nothing is unpacked, no root needed.
- ``dir`` (erofs-utils 1.5, Debian 12): ``tarlayer.extract_layer`` unpacks it
  into a private directory and ``erofsbuild`` runs ``mkfs.erofs`` on that.

The image is then wrapped by ``pack.pack_image``. An EROFS layer goes straight
from its decompressor into ``pack_image``, which validates it: the filesystem
is not rebuilt, so its bytes (and its diff_id) stay the same.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from stream_processor import mediatypes, seekable
from stream_processor.convert.erofsbuild import (
    MKFS,
    build_from_directory,
    find_mkfs,
    finish_image,
    layer_uuid,
)
from stream_processor.convert.namespace import ExtractStats
from stream_processor.convert.oci import Json, Layout
from stream_processor.convert.tarlayer import DEFAULT_MAX_LAYER_BYTES, extract_layer
from stream_processor.convert.tarmode import build_from_tar
from stream_processor.errors import DataError, ProcessorError, Terminated, UsageError
from stream_processor.framing import DEFAULT_MAX_WINDOW
from stream_processor.mediatypes import Compression
from stream_processor.pack import DEFAULT_CHUNK_SIZE, PackResult, pack_image

READ_SIZE = 1 << 20


class LayerKind(Enum):
    TAR = "tar"
    EROFS = "erofs"


class Builder(Enum):
    """How a tar layer becomes EROFS (``--builder``; the values are the CLI's)."""

    AUTO = "auto"  # TAR when the mkfs.erofs can stream a tar, else DIR
    TAR = "tar"  # streamed into mkfs.erofs --tar=f --aufs (erofs-utils >= 1.8)
    DIR = "dir"  # unpacked, then mkfs.erofs on the directory


def classify(media_type: str) -> tuple[LayerKind, Compression]:
    """What a layer media type holds and how it is compressed (the rules are ``mediatypes``'),
    ``UsageError`` if unknown."""
    compression = mediatypes.tar_compression(media_type)
    if compression is not None:
        return LayerKind.TAR, compression
    compression = mediatypes.erofs_compression(media_type)
    if compression is not None:
        return LayerKind.EROFS, compression
    raise UsageError(
        f"cannot convert a layer of media type {media_type!r}: only OCI/Docker tar, "
        "tar+gzip, tar+zstd and EROFS layers are supported"
    )


@dataclass(frozen=True)
class LayerSettings:
    """How new layers are produced; the same for every layer of a conversion."""

    compression: Compression = Compression.ZSTD
    chunk_size: int | None = DEFAULT_CHUNK_SIZE
    level: int | None = None
    max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES
    build_time: int = 0
    mkfs: str = MKFS  # a name looked up on PATH, or a path
    builder: Builder = Builder.AUTO
    dm_verity_block_size: int | None = None  # append a dm-verity frame (seekable zstd only)


def resolve_builder(settings: LayerSettings) -> LayerSettings:
    """``settings`` with ``builder`` decided (TAR or DIR); ``UsageError`` if impossible."""
    mkfs = find_mkfs(settings.mkfs)
    builder = settings.builder
    if builder is Builder.AUTO:
        builder = Builder.TAR if mkfs.streams_tar else Builder.DIR
    if builder is Builder.TAR and not mkfs.streams_tar:
        raise UsageError(
            f"--builder tar needs erofs-utils 1.8 or newer (mkfs.erofs --tar, --mkfs-time); "
            f"{mkfs.describe()} is older. Use --builder dir, or point --mkfs at a newer one"
        )
    return replace(settings, builder=builder)


@dataclass
class LayerReport:
    """Figures for one converted layer (the ``--json`` report and progress lines)."""

    source_digest: str
    source_media_type: str
    source_size: int
    kind: str
    tar_size: int | None
    erofs_size: int
    wrapped_size: int
    media_type: str
    digest: str
    diff_id: str
    seconds: float
    entries: int | None = None
    phases: dict[str, float] | None = None  # unpack / mkfs / pack seconds of a rebuilt layer
    builder: str | None = None  # "tar" or "dir" for a rebuilt layer
    # a re-wrapped layer's chunk_digest annotation: "sha512", or "sha256" (our older form)
    source_chunk_digest: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LayerOutcome:
    pack: PackResult
    blob: Path
    report: LayerReport

    def descriptor(self) -> Json:
        desc: Json = {
            "mediaType": self.pack.media_type,
            "digest": self.pack.digest,
            "size": self.pack.size,
        }
        if self.pack.annotations:
            desc["annotations"] = dict(sorted(self.pack.annotations.items()))
        return desc


class HashingReader(io.RawIOBase):
    """Counts and hashes what passes through; reports progress as bytes go by."""

    def __init__(
        self, raw: BinaryIO, what: str, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        super().__init__()
        self._raw = raw
        self._what = what
        self._on_bytes = on_bytes
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._raw.read(len(view))
        except (ProcessorError, Terminated):
            raise
        except Exception as exc:  # zstd/gzip decoders raise their own error types
            raise DataError(f"{self._what}: cannot decompress: {exc}") from None
        n = len(data)
        view[:n] = data
        self.sha256.update(data)
        self.size += n
        if self._on_bytes is not None and n:
            self._on_bytes(self.size)
        return n

    def drain(self) -> None:
        buf = bytearray(READ_SIZE)
        while self.readinto(buf):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def decompressor(raw: BinaryIO, compression: Compression) -> BinaryIO:
    """A reader of the decompressed stream (zstd may hold many frames, gzip many members)."""
    if compression is Compression.ZSTD:
        import zstandard

        dctx = zstandard.ZstdDecompressor(max_window_size=DEFAULT_MAX_WINDOW)
        return dctx.stream_reader(raw, read_size=READ_SIZE, read_across_frames=True)
    if compression is Compression.GZIP:
        from isal import igzip  # type: ignore[import-untyped,unused-ignore]

        reader: BinaryIO = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call,assignment,unused-ignore]
        return reader
    return raw


@dataclass(frozen=True)
class _Job:
    """One layer's conversion: where it comes from, how it is produced, whom to tell."""

    layout: Layout
    desc: Json
    compression: Compression  # of the source blob
    settings: LayerSettings
    threads: int
    on_bytes: Callable[[int], None] | None
    on_phase: Callable[[int, int], None] | None

    @property
    def what(self) -> str:
        return f"layer {self.desc.get('digest')}"

    def phase(self, index: int, total: int) -> None:
        if self.on_phase is not None:
            self.on_phase(index, total)

    def pack(self, raw: BinaryIO, out: BinaryIO, *, counts_bytes: bool) -> PackResult:
        """``raw`` (an EROFS image) wrapped into ``out``; ``counts_bytes``: report its bytes."""
        settings = self.settings
        chunk = settings.chunk_size if settings.compression is Compression.ZSTD else None
        on_bytes = self.on_bytes if counts_bytes else None
        return pack_image(
            raw,
            out,
            compression=settings.compression,
            level=settings.level,
            chunk_size=chunk,
            threads=self.threads,
            dm_verity_block_size=settings.dm_verity_block_size,
            on_progress=None if on_bytes is None else lambda read, _written: on_bytes(read),
        )


@dataclass(frozen=True)
class _Built:
    """A tar layer rebuilt and wrapped."""

    pack: PackResult
    tar_size: int
    entries: int
    phases: dict[str, float]  # unpack (dir builder) / mkfs / pack seconds


def convert_layer(
    layout: Layout,
    desc: Json,
    expected_diff_id: str | None,
    settings: LayerSettings,
    work_root: Path,
    blob_dir: Path,
    *,
    threads: int = 1,
    on_bytes: Callable[[int], None] | None = None,
    on_phase: Callable[[int, int], None] | None = None,
) -> LayerOutcome:
    """Convert the layer ``desc``; the new blob is left in ``blob_dir`` (a temporary name).

    ``on_bytes(n)`` reports the bytes read in the current phase, ``on_phase(i,
    total)`` a new phase (an index into ``PHASES``, and its total bytes, 0 if
    unknown), so a live line can say what a layer is doing.
    """
    started = time.monotonic()
    media_type = str(desc.get("mediaType", ""))
    kind, compression = classify(media_type)
    job = _Job(layout, desc, compression, settings, threads, on_bytes, on_phase)
    work = Path(tempfile.mkdtemp(prefix="layer-", dir=work_root))
    blob_fd, blob_name = tempfile.mkstemp(prefix=".tmp-", dir=blob_dir)
    blob = Path(blob_name)
    os.fchmod(blob_fd, 0o644)
    built: _Built | None = None
    source_chunk_digest = None
    try:
        with open(blob_fd, "wb") as out:
            if kind is LayerKind.TAR:
                built = _from_tar(job, expected_diff_id, work, out)
                pack = built.pack
            else:
                job.phase(PHASE_REWRAP, int(desc.get("size", 0)))
                pack, source_chunk_digest = _rewrap(job, out)
    except BaseException:
        blob.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = LayerReport(
        source_digest=str(desc.get("digest")),
        source_media_type=media_type,
        source_size=int(desc.get("size", 0)),
        kind="built" if built is not None else "rewrapped",
        tar_size=built.tar_size if built is not None else None,
        erofs_size=pack.image_size,
        wrapped_size=pack.size,
        media_type=pack.media_type,
        digest=pack.digest,
        diff_id=pack.diff_id,
        seconds=round(time.monotonic() - started, 3),
        entries=built.entries if built is not None else None,
        phases=built.phases if built is not None else None,
        builder=settings.builder.value if built is not None else None,
        source_chunk_digest=source_chunk_digest,
    )
    return LayerOutcome(pack, blob, report)


def _from_tar(job: _Job, expected_diff_id: str | None, work: Path, out: BinaryIO) -> _Built:
    """A tar layer through the chosen builder into an image, then wrapped into ``out``.

    The ``tar`` builder starts ``mkfs.erofs`` before the tar's digest is
    known, so it gets the UUID the config's diff_id promises; a layer without
    one gets it fixed in the superblock afterwards (the same bytes, see
    ``erofsbuild``).
    """
    settings = job.settings
    image = work / "layer.erofs"
    mkfs = find_mkfs(settings.mkfs)
    started = time.monotonic()
    streamed = settings.builder is Builder.TAR
    promised = layer_uuid(expected_diff_id or "")
    root = work / "rootfs"
    phases: dict[str, float] = {}

    def build(tar: BinaryIO) -> ExtractStats:
        if streamed:
            return build_from_tar(
                tar,
                image,
                mkfs=mkfs,
                fs_uuid=promised,
                build_time=settings.build_time,
                max_bytes=settings.max_layer_bytes,
            )
        root.mkdir(mode=0o755)
        return extract_layer(tar, root, max_bytes=settings.max_layer_bytes)

    job.phase(PHASE_READ, 0)
    stats, tar_size, diff_id = _read_tar(job, expected_diff_id, build)
    if streamed:
        if layer_uuid(diff_id) != promised:
            finish_image(image, build_time=settings.build_time, fs_uuid=layer_uuid(diff_id))
    else:
        phases["unpack"] = round(time.monotonic() - started, 3)
        job.phase(PHASE_MKFS, 0)
        build_from_directory(
            root, image, fs_uuid=layer_uuid(diff_id), build_time=settings.build_time, mkfs=mkfs
        )
        shutil.rmtree(root, ignore_errors=True)  # free the space before compressing
    built = time.monotonic()
    job.phase(PHASE_PACK, image.stat().st_size)
    with image.open("rb") as raw:
        pack = job.pack(raw, out, counts_bytes=True)
    phases["mkfs"] = round(built - started - phases.get("unpack", 0.0), 3)
    phases["pack"] = round(time.monotonic() - built, 3)
    return _Built(pack, tar_size, stats.entries, phases)


# What a layer is doing, for the live line (``on_phase``): index -> words.
PHASES = ("reading tar", "mkfs.erofs", "packing", "re-wrapping")
PHASE_READ, PHASE_MKFS, PHASE_PACK, PHASE_REWRAP = range(len(PHASES))


def about(what: str, message: str) -> str:
    """``message`` prefixed with ``what``, unless it already names it (no digest said twice)."""
    return message if message.startswith(what) else f"{what}: {message}"


def _read_tar(
    job: _Job, expected_diff_id: str | None, builder: Callable[[BinaryIO], ExtractStats]
) -> tuple[ExtractStats, int, str]:
    """Stream the layer's tar once into ``builder``; check the blob and the diff_id.

    Returns what the builder reports, the tar's size and its diff_id.
    """
    what = job.what
    with job.layout.open_blob(job.desc, "layer") as blob:
        tar = HashingReader(decompressor(blob, job.compression), what, job.on_bytes)
        try:
            stats = builder(io.BufferedReader(tar, READ_SIZE))
        except DataError as exc:
            raise DataError(about(what, exc.message)) from None
        tar.drain()
        while blob.read(READ_SIZE):  # anything after the compressed stream still counts
            pass
    diff_id = tar.digest
    if expected_diff_id is not None and expected_diff_id != diff_id:
        raise DataError(
            f"{what}: its uncompressed tar hashes to {diff_id}, but the image config "
            f"lists diff_id {expected_diff_id}"
        )
    return stats, tar.size, diff_id


def _rewrap(job: _Job, out: BinaryIO) -> tuple[PackResult, str | None]:
    """Re-wrap an EROFS layer; also check its chunk_digest annotation, if it has one.

    Returns the pack result and the annotation's form ("sha512", or "sha256" as
    earlier versions of this project wrote it), None without the annotation.
    """
    what = job.what
    notes = job.desc.get("annotations") or {}
    table_digest = notes.get(seekable.ANNOTATION_TABLE_DIGEST)
    table_offset = notes.get(seekable.ANNOTATION_TABLE_OFFSET)
    form = None
    with job.layout.open_blob(job.desc, "layer") as blob:
        source: Any = blob
        if table_digest is not None and str(table_offset or "").isdigit():
            source = capture = seekable.FrameCapture(blob, int(str(table_offset)))
        image = HashingReader(decompressor(source, job.compression), what, job.on_bytes)
        try:
            pack = job.pack(io.BufferedReader(image, READ_SIZE), out, counts_bytes=False)
        except DataError as exc:
            raise DataError(about(what, exc.message)) from None
        image.drain()  # pack_image reads to the end already; this only makes it explicit
        while source.read(READ_SIZE):  # so the blob's digest is checked
            pass
    if source is not blob:
        try:
            form = seekable.check_table_digest(capture.payload(), str(table_digest))
        except DataError as exc:
            raise DataError(about(what, exc.message)) from None
    return pack, form
