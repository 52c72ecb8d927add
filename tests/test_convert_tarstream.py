"""The lean tar reader agrees with ``tarfile`` on tars written by ``tarfile`` and GNU tar.

The rich tree (device nodes, owners) needs root; the synthetic archives, the
user-made tree and the Hypothesis differential do not, so the parser of
untrusted input is checked on any machine.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from stream_processor.convert.tarstream import TarReader
from stream_processor.errors import DataError
from tests.builders import rich_tree

LONG = "d" * 60 + "/" + "e" * 80 + "/" + "f" * 120


def reference(data: bytes) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            content = tar.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            xattrs = {
                k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.")
            }
            out.append(
                (m.name, m.type, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), m.linkname,
                 m.devmajor, m.devminor, content, xattrs)
            )  # fmt: skip
    return out


def ours(data: bytes) -> list[tuple[object, ...]]:
    """As ``reference``; tarfile strips a directory's trailing slash, so the same is done here."""
    out: list[tuple[object, ...]] = []
    reader = TarReader(io.BytesIO(data))
    for e in reader:
        content = reader.read(e.size, "x") if e.isreg() else None
        name = e.name.rstrip("/") if e.isdir() else e.name
        out.append(
            (name, e.type, e.mode, e.uid, e.gid, int(e.mtime), e.linkname,
             e.devmajor, e.devminor, content, e.xattrs)
        )  # fmt: skip
    return out


def _tar(fmt: int, tree: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for path in sorted(tree.rglob("*")):
            info = tar.gettarinfo(str(path), path.relative_to(tree).as_posix())
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {
                    f"SCHILY.xattr.{n}": os.getxattr(path, n, follow_symlinks=False).decode(
                        "utf-8", "surrogateescape"
                    )
                    for n in os.listxattr(path, follow_symlinks=False)
                }
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        big = tarfile.TarInfo(LONG + "/big-ids")
        big.uid = big.gid = 3_000_000  # beyond 7 octal digits: base-256 (GNU) or PAX
        big.linkname = "l" * 150
        big.type = tarfile.SYMTYPE
        tar.addfile(big)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the rich tree has device nodes and owners: root")
    root = rich_tree(tmp_path_factory.mktemp("tree") / "t")
    (root / Path(LONG)).mkdir(parents=True)
    (root / Path(LONG) / "file").write_text("deep\n")
    return root


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_matches_tarfile(tree: Path, fmt: int) -> None:
    data = _tar(fmt, tree)
    assert ours(data) == reference(data)


def test_matches_tarfile_on_gnu_tar_output(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "gnu.tar"
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--format=posix", "-C", str(tree),
         "-cf", str(out), "."],
        check=True,
    )  # fmt: skip
    data = out.read_bytes()
    assert ours(data) == reference(data)


def test_ustar_prefix() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("p" * 120 + "/name")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert ours(buf.getvalue()) == reference(buf.getvalue())


def test_bad_checksum_and_truncation() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 5000
        tar.addfile(info, io.BytesIO(b"x" * 5000))
    data = bytearray(buf.getvalue())
    with pytest.raises(DataError, match="ends early"):
        ours(bytes(data[:2048]))
    data[0] ^= 1
    with pytest.raises(DataError, match="bad tar header checksum at byte 0"):
        ours(bytes(data))


def test_implausible_long_name_is_refused() -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 1 << 30
    data = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)
    with pytest.raises(DataError, match="GNU long name of 1073741824 bytes is implausibly"):
        ours(data)


# ---------------------------------------------------------------- without root


def _member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _synthetic(fmt: int) -> bytes:
    """Every member type a layer has, described to ``tarfile`` (no device node is made)."""
    xattrs = {"SCHILY.xattr.user.note": "kept", "SCHILY.xattr.security.capability": "\x01cap"}
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_member("dir", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000, mtime=1 << 30), None),
        (_member("dir/file", mode=0o4755, uid=0, gid=42), b"hello world"),
        (_member("dir/empty", mode=0o600), b""),
        (_member("dir/link", tarfile.SYMTYPE, linkname="../" + "s" * 150), None),
        (_member("dir/hard", tarfile.LNKTYPE, linkname="dir/file"), None),
        (_member("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        (_member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660), None),
        (_member("run/fifo", tarfile.FIFOTYPE, mode=0o644), None),
        (_member(LONG + "/deep", uid=3_000_000, gid=3_000_000), bytes(range(256)) * 19 + b"x"),
    ]  # fmt: skip
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            if fmt == tarfile.PAX_FORMAT and info.isreg():
                info.pax_headers = dict(xattrs)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_matches_tarfile_on_synthetic_members(fmt: int) -> None:
    data = _synthetic(fmt)
    got = ours(data)
    assert got == reference(data)
    assert {entry[1] for entry in got} >= {b"0", b"1", b"2", b"3", b"4", b"5", b"6"}


def _user_tree(root: Path) -> Path:
    """What anyone can create: files, directories, links, a FIFO, long names."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("key=value\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(70_000))
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    os.link(root / "etc" / "conf", root / "etc" / "conf.hard")
    os.mkfifo(root / "fifo")
    (root / Path(LONG)).mkdir(parents=True)
    (root / Path(LONG) / "file").write_text("deep\n")
    (root / "empty").write_bytes(b"")
    return root


@pytest.mark.parametrize("fmt", ["posix", "gnu", "ustar"])
def test_matches_tarfile_on_gnu_tar_output_without_root(tmp_path: Path, fmt: str) -> None:
    tree = _user_tree(tmp_path / "tree")
    out = tmp_path / "gnu.tar"
    if fmt == "ustar":  # ustar cannot hold the long name
        for path in sorted(tree.rglob("*"), reverse=True):
            if len(str(path.relative_to(tree))) > 100:
                path.rmdir() if path.is_dir() else path.unlink()
    subprocess.run(["tar", f"--format={fmt}", "-C", str(tree), "-cf", str(out), "."], check=True)
    data = out.read_bytes()
    assert ours(data) == reference(data)


# ---------------------------------------------------------------- Hypothesis differential

_NAME_PART = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\x00"),
    min_size=1,
    max_size=40,
)
_NAMES = st.lists(_NAME_PART, min_size=1, max_size=6).map("/".join)
_IDS = st.one_of(st.integers(0, 65535), st.integers(0, 1 << 40))
_TIMES = st.one_of(
    st.integers(0, 8**11 - 1), st.integers(-(1 << 40), 1 << 40), st.floats(0, 1e10, allow_nan=False)
)


@st.composite
def _members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes | None]:
    kind = draw(
        st.sampled_from(
            [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
             tarfile.BLKTYPE, tarfile.FIFOTYPE]
        )
    )  # fmt: skip
    info = tarfile.TarInfo(draw(_NAMES))
    info.type = kind
    info.mode = draw(st.integers(0, 0o7777))
    info.uid, info.gid = draw(_IDS), draw(_IDS)
    info.mtime = draw(_TIMES)
    if draw(st.booleans()):
        info.uname, info.gname = draw(_NAME_PART), draw(_NAME_PART)
    data = None
    if kind == tarfile.REGTYPE:
        data = draw(st.one_of(st.binary(max_size=600), st.binary(min_size=3000, max_size=9000)))
        info.size = len(data)
    elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(_NAMES)
    elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = draw(st.integers(0, 4095)), draw(st.integers(0, 4095))
    if draw(st.booleans()):
        info.pax_headers = draw(
            st.dictionaries(
                st.from_regex(
                    r"SCHILY\.xattr\.(user|trusted|security)\.[a-z]{1,12}", fullmatch=True
                ),
                st.text(st.characters(blacklist_categories=["Cs"]), max_size=60),
                max_size=3,
            )
        )
    return info, data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
    st.lists(_members(), min_size=1, max_size=8),
)
def test_matches_tarfile_on_generated_archives(
    fmt: int, members: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    """Archives ``tarfile`` writes from drawn members: headers and contents member by member."""
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for info, data in members:
                tar.addfile(info, None if data is None else io.BytesIO(data))
    except ValueError:  # not representable in this format (ustar: long names, big numbers)
        reject()
    data = buf.getvalue()
    expected = reference(data)
    assert len(expected) == len(members)
    assert ours(data) == expected
