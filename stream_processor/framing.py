"""The compressed streams' framing, as far as it needs no decompressor.

Magic numbers, the zstd window limit, the framing-bomb budget both codecs
enforce, and what each codec counts: here, not in a codec, so that choosing
a codec (``codecs.detect``) loads none of them.
"""

from __future__ import annotations

from stream_processor.errors import DataError

ZSTD_MAGIC = 0xFD2FB528
ZSTD_MAGIC_BYTES = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_WINDOW = 1 << 27  # what `zstd -d` accepts without --long / --memory
FRAME_ALLOWANCE = 4096  # frames any stream may hold, whatever its output
MIN_FRAME_OUTPUT = 4096  # beyond the allowance, the average output a frame must carry
MAX_RECORDED_OFFSETS = 1 << 16  # ZstdStats lists keep the first ones only: bounded memory


def is_zstd_start(head: bytes | memoryview) -> bool:
    """True if ``head`` starts a zstd frame or a skippable frame."""
    if len(head) < 4:
        return False
    magic = int.from_bytes(head[:4], "little")
    return magic == ZSTD_MAGIC or (magic & SKIPPABLE_MASK) == SKIPPABLE_MAGIC


class ZstdStats:
    """What the decoder saw; filled in as it goes."""

    def __init__(self) -> None:
        self.frames = 0
        self.skippable_frames = 0
        self.out_bytes = 0
        self.skippable: list[tuple[int, int, int]] = []  # (magic, offset, size), capped
        self.frame_offsets: list[int] = []  # capped at MAX_RECORDED_OFFSETS

    def count_frame(self, offset: int) -> None:
        """A data frame starting at ``offset`` has been consumed."""
        if len(self.frame_offsets) < MAX_RECORDED_OFFSETS:
            self.frame_offsets.append(offset)
        self.frames += 1


class GzipStats:
    """What the gzip decoder saw."""

    def __init__(self) -> None:
        self.members = 0
        self.backend = ""
        self.out_bytes = 0


def check_frame_budget(
    frames: int, total_out: int, offset: int, codec: str = "zstd", unit: str = "frames"
) -> None:
    """Refuse a framing bomb: a stream of empty or tiny frames (or gzip members).

    Each frame costs a few microseconds of Python however little it holds, so
    100 MB of 9-byte empty frames would keep a node's CPU busy for minutes.
    Any stream may hold ``FRAME_ALLOWANCE`` frames; beyond that, frames must
    average at least ``MIN_FRAME_OUTPUT`` bytes of output (a seekable layer's
    smallest chunk), which keeps the work proportional to the output.
    """
    if frames > FRAME_ALLOWANCE + total_out // MIN_FRAME_OUTPUT:
        raise DataError(
            f"{codec}: {frames} {unit} for only {total_out} bytes of output by offset {offset}: "
            f"refusing a stream of empty or tiny {unit}"
        )
