"""A lean streaming tar reader: headers in, one entry at a time, data read straight through.

Why not ``tarfile``: in stream mode (``r|``) every 512-byte header read goes
through ``_Stream``, which re-joins and re-slices its buffer, and every entry
builds a ``TarInfo`` with a dozen field conversions; on layers of many small
files that dominated a conversion. This reader parses exactly what an image
layer uses: ustar/GNU headers (octal or base-256 numbers, the ustar prefix),
GNU long names/links (``L``/``K``), PAX extended and global headers (path,
linkpath, size, uid, gid, mtime, ``SCHILY.xattr.*``). Anything else (GNU
sparse files, multi-volume, unknown types) is reported by type so the caller
can refuse it by name.

``tests/test_convert_tarstream.py`` checks it against ``tarfile`` (on archives
it writes, Hypothesis-drawn ones too) and GNU tar.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from stream_processor.errors import DataError

BLOCK = 512
REGTYPE, AREGTYPE, CONTTYPE = b"0", b"\0", b"7"
LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE = b"1", b"2", b"3", b"4", b"5", b"6"
GNU_LONGNAME, GNU_LONGLINK, PAX_HEADER, PAX_GLOBAL = b"L", b"K", b"x", b"g"
XATTR_PREFIX = "SCHILY.xattr."
MAX_META = 1 << 20  # a long name or PAX header larger than this is not a real layer


@dataclass
class Entry:
    """One tar member, with the attribute names ``tarfile.TarInfo`` uses."""

    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def isreg(self) -> bool:
        return self.type in (REGTYPE, AREGTYPE, CONTTYPE)

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def ischr(self) -> bool:
        return self.type == CHRTYPE

    def isblk(self) -> bool:
        return self.type == BLKTYPE

    def isfifo(self) -> bool:
        return self.type == FIFOTYPE


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _truncated(what: str) -> DataError:
    return DataError(f"layer tar ends early, inside {what}")


def _string(field_bytes: bytes) -> bytes:
    end = field_bytes.find(b"\0")
    return field_bytes if end < 0 else field_bytes[:end]


def _number(field_bytes: bytes, what: str) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field_bytes[1:], "big")
        if field_bytes[0] == 0xFF:
            value -= 1 << (8 * (len(field_bytes) - 1))
        elif field_bytes[0] != 0x80:
            raise DataError(f"tar header field {what} has an invalid binary number")
        return value
    text = _string(field_bytes).strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise DataError(f"tar header field {what} is not a number: {text!r}") from None


class TarReader:
    """Iterate entries of an uncompressed tar stream; read each regular file's data in turn."""

    def __init__(self, stream: BinaryIO) -> None:
        self._f = stream
        self._left = 0  # unread data bytes of the current entry
        self._pad = 0  # padding after them
        self._globals: dict[str, str] = {}
        self._current: Entry | None = None  # whose data is being read, for messages
        self.offset = 0

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            # a buffered reader returns short only at the end of the stream
            parts = [data]
            got = len(data)
            while got < n:
                more = self._f.read(n - got)
                if not more:
                    raise _truncated(what)
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.offset += n
        return data

    def _header_block(self) -> bytes | None:
        first = self._f.read(BLOCK)
        if not first:
            return None
        if len(first) == BLOCK:
            self.offset += BLOCK
            return first
        self.offset += len(first)
        return first + self._read_exact(BLOCK - len(first), "a tar header")

    def read(self, n: int, what: str) -> bytes:
        """Up to ``n`` bytes of the current entry's data."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        data = self._read_exact(n, what)
        self._left -= n
        return data

    def _skip_rest(self) -> None:
        todo = self._left + self._pad
        try:
            while todo:
                chunk = self._read_exact(min(todo, 1 << 20), "")
                todo -= len(chunk)
        except DataError:  # named only now: per entry, a message nobody reads costs time
            entry = self._current
            assert entry is not None  # there is data to skip only after an entry
            raise _truncated(f"entry {entry.name!r} (declared {entry.size} bytes)") from None
        self._left = self._pad = 0

    def _payload(self, size: int, what: str) -> bytes:
        if size > MAX_META:
            raise DataError(f"tar {what} of {size} bytes is implausibly large; refusing")
        data = self._read_exact(size, what)
        self._read_exact(-size % BLOCK, what)
        return data

    def __iter__(self) -> Iterator[Entry]:
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}
        while True:
            self._skip_rest()
            header = self._header_block()
            if header is None or header == bytes(BLOCK):
                return  # end-of-archive marker (or a tar without one)
            _check_sum(header, self.offset - BLOCK)
            kind = header[156:157]
            size = _number(header[124:136], "size")
            if kind == GNU_LONGNAME:
                long_name = _decode(_string(self._payload(size, "GNU long name")))
                continue
            if kind == GNU_LONGLINK:
                long_link = _decode(_string(self._payload(size, "GNU long link")))
                continue
            if kind in (PAX_HEADER, PAX_GLOBAL):
                records = _pax_records(self._payload(size, "PAX header"))
                if kind == PAX_GLOBAL:
                    self._globals.update(records)
                else:
                    pax.update(records)
                continue
            entry = self._entry(header, kind, size, {**self._globals, **pax}, long_name, long_link)
            long_name = long_link = None
            pax = {}
            self._left = entry.size if entry.isreg() else 0
            self._pad = -self._left % BLOCK
            self._current = entry
            yield entry

    def _entry(
        self,
        header: bytes,
        kind: bytes,
        size: int,
        pax: dict[str, str],
        long_name: str | None,
        long_link: str | None,
    ) -> Entry:
        name = _string(header[0:100])
        if header[257:263] == b"ustar\x00":  # POSIX ustar: a prefix may hold the leading part
            prefix = _string(header[345:500])
            if prefix:
                name = prefix + b"/" + name
        entry = Entry(
            name=long_name if long_name is not None else _decode(name),
            type=kind,
            size=size,
            mode=_number(header[100:108], "mode") & 0o7777,
            uid=_number(header[108:116], "uid"),
            gid=_number(header[116:124], "gid"),
            mtime=float(_number(header[136:148], "mtime")),
            linkname=long_link if long_link is not None else _decode(_string(header[157:257])),
            devmajor=_number(header[329:337], "devmajor"),
            devminor=_number(header[337:345], "devminor"),
        )
        for key, value in pax.items():
            if key == "path":
                entry.name = value
            elif key == "linkpath":
                entry.linkname = value
            elif key in ("size", "uid", "gid"):
                setattr(entry, key, _pax_int(key, value))
            elif key == "mtime":
                try:
                    entry.mtime = float(value)
                except ValueError:
                    raise DataError(f"PAX mtime {value!r} is not a number") from None
            elif key.startswith(XATTR_PREFIX):
                entry.xattrs[key[len(XATTR_PREFIX) :]] = value.encode("utf-8", "surrogateescape")
        if entry.type in (REGTYPE, AREGTYPE) and entry.name.endswith("/"):
            entry.type = DIRTYPE  # pre-POSIX tars mark directories by the trailing slash only
        if entry.size < 0:
            raise DataError(f"tar entry {entry.name!r} has a negative size")
        return entry


def _pax_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"PAX {key} {value!r} is not a number") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records; values may be binary (xattrs), kept via surrogateescape."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise DataError("malformed PAX header record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise DataError("malformed PAX header record length") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n"):
            raise DataError("malformed PAX header record")
        key, eq, value = record[:-1].partition(b"=")
        if not eq:
            raise DataError("malformed PAX header record (no '=')")
        records[_decode(key)] = _decode(value)
        pos += length
    return records


def _check_sum(header: bytes, offset: int) -> None:
    stored = _string(header[148:156]).strip(b" \0")
    try:
        expected = int(stored, 8)
    except ValueError:
        raise DataError(f"not a tar archive: no valid tar header at byte {offset}") from None
    unsigned = sum(header[:148]) + 256 + sum(header[156:])
    if expected != unsigned:
        signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
        if expected != signed:
            raise DataError(f"not a tar archive: bad tar header checksum at byte {offset}")
