"""Streaming gzip decoding: several members, CRC32 and ISIZE verified, bounded output.

ISA-L's ``IgzipDecompressor`` (the ``isal`` package) decodes, the stdlib
``zlib`` behind the same interface is the fallback; why ISA-L, in figures: README
"Performance" and "Dependencies". Each member gets its own decompressor, and
``max_length`` caps every call's output at ``OUT_STEP`` (no decompression bomb).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Generator, Iterator
from typing import Any, Protocol, cast

from stream_processor.errors import DataError
from stream_processor.framing import GZIP_MAGIC, check_frame_budget
from stream_processor.framing import GzipStats as GzipStats  # the codec's stats, from here too
from stream_processor.source import Source

IN_STEP = 256 * 1024
OUT_STEP = 1024 * 1024


class _Decompressor(Protocol):
    """One gzip member's decoder, with the interface of ISA-L's ``IgzipDecompressor``.

    ``decompress(data, max_length)`` returns at most ``max_length`` bytes and
    keeps unconsumed input inside; ``needs_input`` says whether the next call
    wants more input or should be made with ``b""`` to drain what is held.
    """

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: Any, max_length: int) -> bytes: ...


class _ZlibMember:
    """stdlib ``zlib`` behind the ``IgzipDecompressor`` interface (the fallback)."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(wbits=31)
        self._tail = b""
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    def decompress(self, data: Any, max_length: int) -> bytes:
        out = self._obj.decompress(self._tail + bytes(data), max_length)
        self._tail = self._obj.unconsumed_tail
        self.needs_input = not self._tail and len(out) < max_length
        return out


def _backend() -> tuple[Callable[[], _Decompressor], type[Exception], str]:
    try:
        from isal import igzip_lib
    except ImportError:  # pragma: no cover - isal is a declared dependency
        return _ZlibMember, zlib.error, "zlib"
    error = cast(type[Exception], igzip_lib.IsalError)
    return (lambda: igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)), error, "isal"


def decode_gzip(src: Source, stats: GzipStats | None = None) -> Iterator[bytes]:
    """Yield the decompressed bytes of every gzip member in ``src``, in order.

    Raises ``DataError`` for empty input, non-gzip data, corrupt deflate
    data, CRC32/ISIZE mismatches, truncation and trailing garbage.
    """
    stats = stats if stats is not None else GzipStats()
    new, error, stats.backend = _backend()
    pending = b""  # input bytes left over from the previous member
    while True:
        head = pending[:4]  # magic, method, flags
        if len(head) < 4:
            head = head + bytes(src.peek(4 - len(head)))
        if not head:
            break
        offset = src.position - len(pending)
        if head[:2] != GZIP_MAGIC:
            if stats.members == 0:
                raise DataError("input is not gzip (no gzip magic at the start)")
            raise DataError(f"gzip: trailing data at offset {offset} is not a gzip member")
        if len(head) == 4 and head[3] & 0xE0:  # RFC 1952: reserved FLG bits must be zero
            raise DataError(f"gzip: member at offset {offset} sets reserved header flags")
        check_frame_budget(stats.members, stats.out_bytes, offset, "gzip", "members")
        dobj = new()
        try:
            pending = yield from _member(src, dobj, pending, stats)
        except error as exc:
            raise DataError(f"gzip: corrupt member at offset {offset}: {exc}") from exc
        except zlib.error as exc:
            raise DataError(f"gzip: corrupt member at offset {offset}: {exc}") from exc
        stats.members += 1
    if stats.members == 0:
        raise DataError("input is empty")


def _member(
    src: Source, dobj: _Decompressor, pending: bytes, stats: GzipStats
) -> Generator[bytes, None, bytes]:
    """Decode one member; return the input bytes that follow it."""
    data: bytes | memoryview = pending
    while not dobj.eof:
        if not dobj.needs_input:
            data = b""  # drain output the decompressor still holds
        elif not data:
            data = src.read_some(IN_STEP)
            if not data:
                raise DataError("gzip: the input ends inside a member (truncated)")
        out = dobj.decompress(data, OUT_STEP)
        data = b""
        if out:
            stats.out_bytes += len(out)
            yield out
    return bytes(dobj.unused_data)
