"""``convert.oci``: platforms, layouts read from a directory or an archive, verified blobs."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from stream_processor.convert.oci import (
    MAX_JSON_BYTES,
    LayoutWriter,
    Platform,
    VerifiedReader,
    canonical_json,
    normalize_arch,
    open_layout,
    platform_matches,
    platform_text,
    write_archive,
)
from stream_processor.errors import DataError, UsageError
from tests.oci_builder import Image, LayoutBuilder, archive_layout, build_layout, sha256


@pytest.mark.parametrize(
    ("text", "platform"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("linux/aarch64/v8", Platform("linux", "arm64", "v8")),
        ("linux/armv7l", Platform("linux", "arm")),
        (" linux/arm/v7 ", Platform("linux", "arm", "v7")),
    ],
)
def test_platform_parse(text: str, platform: Platform) -> None:
    assert Platform.parse(text) == platform


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/arm/v7/x", ""])
def test_platform_parse_refuses(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        Platform.parse(text)
    assert caught.value.message == (
        f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"
    )


def test_normalize_arch_leaves_oci_names_alone() -> None:
    assert [normalize_arch(a) for a in ("x86_64", "aarch64", "i686", "riscv64")] == [
        "amd64",
        "arm64",
        "386",
        "riscv64",
    ]


def test_platform_matching() -> None:
    arm_v7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
    assert platform_matches(arm_v7, ())  # nothing asked: everything
    assert platform_matches(arm_v7, [Platform.parse("linux/arm")])  # any variant
    assert platform_matches(arm_v7, [Platform.parse("linux/arm/v7")])
    assert not platform_matches(arm_v7, [Platform.parse("linux/arm/v6")])
    assert not platform_matches(arm_v7, [Platform.parse("windows/arm")])
    aliased = {"os": "linux", "architecture": "aarch64"}
    assert platform_matches(aliased, [Platform.parse("linux/amd64"), Platform.parse("linux/arm64")])


def test_platform_text() -> None:
    assert platform_text({"os": "linux", "architecture": "arm", "variant": "v7"}) == "linux/arm/v7"
    assert platform_text({"architecture": "amd64"}) == "?/amd64"


# ---------------------------------------------------------------- verified reads


def verified(data: bytes, digest: str, size: int) -> bytes:
    with io.BufferedReader(VerifiedReader(io.BytesIO(data), digest, size, "layer x")) as f:
        return f.read()


def test_verified_reader_checks_size_and_digest() -> None:
    data = b"content" * 100
    assert verified(data, sha256(data), len(data)) == data
    with pytest.raises(DataError, match="layer x has 700 bytes, its descriptor says 701"):
        verified(data, sha256(data), len(data) + 1)
    with pytest.raises(DataError, match="layer x is larger than the 699 bytes its descriptor"):
        verified(data, sha256(data), len(data) - 1)
    with pytest.raises(
        DataError, match=f"layer x is corrupt: its content hashes to {sha256(data)}"
    ):
        verified(data, sha256(b"other"), len(data))


@pytest.fixture
def layout_dir(tmp_path: Path) -> Path:
    return build_layout(tmp_path / "layout", [Image([b"not really a tar"], "none")])


@pytest.mark.parametrize("as_archive", [False, True])
def test_directory_and_archive_read_the_same(
    layout_dir: Path, tmp_path: Path, as_archive: bool
) -> None:
    path = archive_layout(layout_dir, tmp_path / "image.tar") if as_archive else layout_dir
    layout = open_layout(path)
    index = layout.index()
    [desc] = index["manifests"]
    manifest = layout.read_json(desc, "manifest")
    [layer] = manifest["layers"]
    with layout.open_blob(layer, "layer") as f:
        assert f.read() == b"not really a tar"


def test_open_layout_refuses_what_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such OCI layout directory or archive"):
        open_layout(tmp_path / "missing")
    with pytest.raises(DataError, match=r"is not an OCI image layout: it has no index\.json"):
        open_layout(tmp_path).index()
    (tmp_path / "junk.tar").write_bytes(b"\x01" * 1024)
    with pytest.raises(DataError, match="is not an uncompressed OCI archive"):
        open_layout(tmp_path / "junk.tar")


@pytest.mark.parametrize(
    ("desc", "message"),
    [
        ({"digest": "sha256:abc", "size": 1}, "unsupported or malformed digest 'sha256:abc'"),
        ({"digest": "md5:" + "0" * 32, "size": 1}, "unsupported or malformed digest"),
        ({"digest": "sha256:" + "A" * 64, "size": 1}, "unsupported or malformed digest"),
        ({"digest": "sha256:" + "0" * 64}, "config descriptor has no valid digest and size"),
        ({"digest": "sha256:" + "0" * 64, "size": -1}, "has no valid digest and size"),
        ({"digest": "sha256:" + "0" * 64, "size": 1}, "the image layout has no blobs/sha256/"),
    ],
)
def test_bad_descriptors_are_refused(
    layout_dir: Path, desc: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        open_layout(layout_dir).read_json(desc, "config")


def test_json_documents_are_size_limited_and_must_be_objects(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "l")
    big = {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": MAX_JSON_BYTES + 1}
    digest, size = builder.blob(b"[1, 2]")
    listed = {"digest": digest, "size": size}
    digest, size = builder.blob(b"{not json")
    broken = {"digest": digest, "size": size}
    layout = open_layout(builder.root)
    with pytest.raises(DataError, match=f"refusing JSON over {MAX_JSON_BYTES}"):
        layout.read_json(big, "config")
    with pytest.raises(DataError, match="is not a JSON object"):
        layout.read_json(listed, "config")
    with pytest.raises(DataError, match="is not valid JSON"):
        layout.read_json(broken, "config")


# ---------------------------------------------------------------- writing


def test_add_json_is_canonical_and_content_addressed(tmp_path: Path) -> None:
    writer = LayoutWriter(tmp_path / "out")
    doc = {"b": 1, "a": "é"}
    desc = writer.add_json(doc, "application/x")
    data = canonical_json(doc)
    assert data == '{"b":1,"a":"é"}'.encode()
    assert desc == {"mediaType": "application/x", "digest": sha256(data), "size": len(data)}
    assert (writer.blobs / desc["digest"].split(":")[1]).read_bytes() == data


def test_copy_blob_never_leaves_a_corrupt_blob_under_its_digest(
    layout_dir: Path, tmp_path: Path
) -> None:
    layout = open_layout(layout_dir)
    [desc] = layout.index()["manifests"]
    [layer] = layout.read_json(desc, "manifest")["layers"]
    blob = layout_dir / "blobs" / "sha256" / layer["digest"].split(":")[1]
    blob.write_bytes(b"not really a taR")  # same size, other content
    writer = LayoutWriter(tmp_path / "out")
    with pytest.raises(DataError, match="is corrupt"):
        writer.copy_blob(layout, layer, "layer")
    assert not (writer.blobs / layer["digest"].split(":")[1]).exists()


def test_write_archive_is_reproducible_and_readable(layout_dir: Path, tmp_path: Path) -> None:
    write_archive(layout_dir, tmp_path / "a.tar")
    (layout_dir / "index.json").touch()  # a new mtime changes nothing
    write_archive(layout_dir, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:3] == ["index.json", "oci-layout", "blobs"]
    assert {(m.uid, m.gid, m.mtime, m.uname) for m in members} == {(0, 0, 0, "")}
    layout = open_layout(tmp_path / "a.tar")
    assert layout.index() == json.loads((layout_dir / "index.json").read_text())
