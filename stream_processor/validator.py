"""Gate between the decompressor and stdout: decide what the payload is, and prove it.

No byte passes before the EROFS superblock (or, on the shared tar route, a
tar header) has been checked; completeness is judged at the end, against
``blocks << blkszbits``. The ``HoldbackSink`` behind the gate keeps the tail
until ``finish`` has passed.
"""

from __future__ import annotations

from stream_processor import superblock
from stream_processor.errors import DataError
from stream_processor.mediatypes import Named, Payload
from stream_processor.sink import HoldbackSink

DECIDE_BYTES = superblock.SUPERBLOCK_OFFSET + 4
TAR_BLOCK = 512
DEFAULT_MAX_OUTPUT = 64 << 30  # 64 GiB: far above any real layer


TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from typing import ClassVar


class Kind(Named):
    """What the payload turned out to be."""

    __slots__ = ()
    EROFS: ClassVar[Kind]
    TAR: ClassVar[Kind]


Kind.EROFS, Kind.TAR = Kind._define("erofs", "tar")


def libmagic(data: bytes) -> str:
    """What ``file(1)`` says about ``data``, in full: the one place libmagic is loaded
    (it is slow to load, so only on error paths and by ``inspect``). Raises if it is
    missing or broken."""
    import magic  # deferred: never on a good layer's start-up

    return str(magic.from_buffer(data))


def describe(head: bytes) -> str:
    """What ``file(1)`` would call these bytes, in an error message: error paths only."""
    if not head:
        return "empty input"
    try:
        text = libmagic(head)
    except Exception:  # libmagic missing or broken: still say something useful
        return f"unrecognised data starting with {head[:8].hex(' ')}"
    return text.split(",")[0] if len(text) > 80 else text


def is_tar_header(block: bytes) -> bool:
    """True for a valid tar header block, or the all-zero end-of-archive block."""
    if len(block) < TAR_BLOCK:
        return False
    if block[:TAR_BLOCK].count(0) == TAR_BLOCK:
        # An archive that starts with end-of-archive is empty: zeros to the end.
        # Data after it is an EROFS image with a damaged magic (its first 1024
        # bytes are zero), not a tar.
        return block.count(0) == len(block)
    block = block[:TAR_BLOCK]
    stored = block[148:156].split(b"\0", 1)[0].strip()
    try:
        expected = int(stored or b"x", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return computed == expected


def check_complete(size: int, sb: superblock.Superblock) -> None:
    """Refuse an image shorter than its superblock promises (the decode gate and ``pack``)."""
    if size < sb.image_size:
        raise DataError(
            f"truncated EROFS image: {size} bytes of the {sb.image_size} "
            f"its superblock promises ({sb.blocks} blocks of {sb.block_size})"
        )


class Verdict:
    """What passed through the gate."""

    def __init__(self, kind: Kind, size: int, sb: superblock.Superblock | None = None) -> None:
        self.kind = kind
        self.size = size
        self.superblock = sb

    @property
    def extra_bytes(self) -> int:
        return self.size - self.superblock.image_size if self.superblock else 0


class ImageGate:
    """Feed decompressed chunks in order; ``finish`` at the end of input."""

    def __init__(
        self, sink: HoldbackSink, payload: Payload, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> None:
        self._sink = sink
        self._payload = payload
        self._max_output = max_output
        self._head: list[bytes | memoryview] = []
        self._head_size = 0
        self._need = DECIDE_BYTES
        self._kind: Kind | None = None
        self.superblock: superblock.Superblock | None = None
        self.size = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self._max_output:
            raise DataError(
                f"output exceeds the limit of {self._max_output} bytes (--max-output-bytes); "
                "refusing a possible decompression bomb"
            )
        if self._kind is not None:
            self._sink.write(chunk)
            return
        self._head.append(chunk)
        self._head_size += len(chunk)
        if self._head_size >= self._need:
            self._decide(final=False)

    def _decide(self, final: bool) -> None:
        head = b"".join(self._head)
        if self._kind is None and self.superblock is None:
            if superblock.has_magic(head):
                self._need = superblock.required_head(head)
                if len(head) < self._need and not final:
                    self._head = [head]
                    return
                self.superblock = superblock.validate(head)
                self._kind = Kind.EROFS
            elif self._payload is Payload.EROFS_OR_TAR and is_tar_header(head):
                self._kind = Kind.TAR
            elif self._payload is Payload.EROFS_OR_TAR:
                raise DataError(f"expected an EROFS image or a tar archive, got: {describe(head)}")
            else:
                raise DataError(f"expected an EROFS image, got: {describe(head)}")
        self._head, self._head_size = [], 0
        self._sink.write(head)

    def finish(self) -> Verdict:
        """Judge the whole stream; raises ``DataError`` if it is not complete and sound."""
        if self._kind is None:
            head = b"".join(self._head)
            if not head:
                raise DataError("the decompressed layer is empty")
            if superblock.has_magic(head) or self._payload is Payload.EROFS:
                if not superblock.has_magic(head):
                    raise DataError(f"expected an EROFS image, got: {describe(head)}")
                raise DataError(
                    f"truncated EROFS image: {len(head)} bytes, less than its first block"
                )
            self._decide(final=True)
        assert self._kind is not None
        sb = self.superblock
        if sb is not None:
            check_complete(self.size, sb)
        return Verdict(self._kind, self.size, sb)
