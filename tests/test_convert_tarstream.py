"""The lean tar reader agrees with ``tarfile`` on tars written by ``tarfile`` and GNU tar."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

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
