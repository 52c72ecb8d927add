"""``convert.layers``: one layer end to end, and the pieces it is made of.

Layers come from real layouts (``tests/oci_builder``), images from real
``mkfs.erofs``; the whole-image behaviour is in test_convert_image.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest
import zstandard

from stream_processor import mediatypes, seekable
from stream_processor.convert.erofsbuild import MKFS
from stream_processor.convert.layers import (
    PHASE_MKFS,
    PHASE_PACK,
    PHASE_READ,
    PHASE_REWRAP,
    Builder,
    HashingReader,
    LayerKind,
    LayerOutcome,
    LayerSettings,
    about,
    classify,
    convert_layer,
    decompressor,
    resolve_builder,
)
from stream_processor.convert.oci import Json, Layout, open_layout
from stream_processor.errors import DataError, UsageError
from stream_processor.mediatypes import Compression
from stream_processor.pack import PackResult
from tests.builders import pack_bytes
from tests.conftest import require_tool, tar_mode_mkfs
from tests.oci_builder import Image, build_layout, sha256, tar_tree


@pytest.mark.parametrize(
    ("media_type", "kind", "compression"),
    [
        (mediatypes.OCI_LAYER_TAR, LayerKind.TAR, Compression.NONE),
        (mediatypes.OCI_LAYER_TAR_GZIP, LayerKind.TAR, Compression.GZIP),
        (mediatypes.OCI_LAYER_TAR_ZSTD, LayerKind.TAR, Compression.ZSTD),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", LayerKind.TAR, Compression.GZIP),
        (mediatypes.EROFS_LAYER, LayerKind.EROFS, Compression.NONE),
        (mediatypes.EROFS_LAYER_ZSTD, LayerKind.EROFS, Compression.ZSTD),
        (mediatypes.EROFS_LAYER_GZIP, LayerKind.EROFS, Compression.GZIP),
    ],
)
def test_classify(media_type: str, kind: LayerKind, compression: Compression) -> None:
    assert classify(media_type) == (kind, compression)


def test_classify_refuses_other_media_types() -> None:
    with pytest.raises(UsageError) as caught:
        classify("application/vnd.in-toto+json")
    assert caught.value.message.startswith(
        "cannot convert a layer of media type 'application/vnd.in-toto+json': only OCI/Docker"
    )


def test_builder_values_are_the_cli_choices() -> None:
    assert [b.value for b in Builder] == ["auto", "tar", "dir"]


def test_resolve_builder_follows_the_mkfs_version() -> None:
    old = require_tool(MKFS)  # Debian 12: erofs-utils 1.5
    assert resolve_builder(LayerSettings(mkfs=old)).builder is Builder.DIR
    assert resolve_builder(LayerSettings(mkfs=tar_mode_mkfs())).builder is Builder.TAR
    dir_on_new = LayerSettings(mkfs=tar_mode_mkfs(), builder=Builder.DIR)
    assert resolve_builder(dir_on_new).builder is Builder.DIR
    with pytest.raises(UsageError, match=r"--builder tar needs erofs-utils 1\.8 or newer"):
        resolve_builder(LayerSettings(mkfs=old, builder=Builder.TAR))


def test_hashing_reader_counts_hashes_and_reports() -> None:
    seen: list[int] = []
    reader = HashingReader(io.BytesIO(b"x" * 3000), "layer a", seen.append)
    assert io.BufferedReader(reader, 1024).read() == b"x" * 3000
    assert (reader.size, reader.digest) == (3000, sha256(b"x" * 3000))
    assert seen[-1] == 3000 and seen == sorted(seen)


def test_hashing_reader_names_a_decompression_failure() -> None:
    broken = decompressor(io.BytesIO(b"\x28\xb5\x2f\xfd garbage"), Compression.ZSTD)
    reader = HashingReader(broken, "layer sha256:ab")
    with pytest.raises(DataError, match=r"^layer sha256:ab: cannot decompress: "):
        reader.drain()


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.GZIP, Compression.NONE])
def test_decompressor_reads_every_frame_or_member(compression: Compression) -> None:
    parts = [os.urandom(5000), b"second part"]
    if compression is Compression.ZSTD:
        blob = b"".join(zstandard.ZstdCompressor().compress(p) for p in parts)
    elif compression is Compression.GZIP:
        blob = b"".join(gzip.compress(p) for p in parts)
    else:
        blob = b"".join(parts)
    assert decompressor(io.BytesIO(blob), compression).read() == b"".join(parts)


def test_about_names_the_layer_once() -> None:
    assert about("layer x", "bad tar") == "layer x: bad tar"
    assert about("layer x", "layer x: bad tar") == "layer x: bad tar"


def test_descriptor_sorts_annotations_and_omits_none() -> None:
    def outcome(annotations: dict[str, str]) -> LayerOutcome:
        pack = PackResult("m", "sha256:d", 5, "sha256:i", 4, None, annotations)
        return LayerOutcome(pack, Path("blob"), None)  # type: ignore[arg-type]

    assert outcome({}).descriptor() == {"mediaType": "m", "digest": "sha256:d", "size": 5}
    assert list(outcome({"b": "2", "a": "1"}).descriptor()["annotations"]) == ["a", "b"]


# ---------------------------------------------------------------- one layer end to end


def _layer(layout: Layout) -> tuple[Json, str]:
    [desc] = layout.index()["manifests"]
    manifest = layout.read_json(desc, "manifest")
    config = layout.read_json(manifest["config"], "config")
    return manifest["layers"][0], config["rootfs"]["diff_ids"][0]


@pytest.fixture(scope="module")
def tar_layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, bytes]:
    tree = tmp_path_factory.mktemp("tree")
    (tree / "etc").mkdir()
    (tree / "etc" / "hostname").write_text("layer\n")
    (tree / "data").write_bytes(os.urandom(100_000))
    tar = tar_tree(tree)
    return open_layout(build_layout(tmp_path_factory.mktemp("src"), [Image([tar], "gzip")])), tar


def _convert(
    layout: Layout, settings: LayerSettings, tmp_path: Path, diff_id: str | None = None
) -> tuple[LayerOutcome, list[int]]:
    desc, promised = _layer(layout)
    phases: list[int] = []
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    (tmp_path / "blobs").mkdir(exist_ok=True)
    outcome = convert_layer(
        layout,
        desc,
        promised if diff_id is None else diff_id,
        resolve_builder(settings) if classify(desc["mediaType"])[0] is LayerKind.TAR else settings,
        tmp_path / "work",
        tmp_path / "blobs",
        on_phase=lambda index, _total: phases.append(index),
    )
    return outcome, phases


@pytest.mark.parametrize("builder", [Builder.TAR, Builder.DIR])
def test_a_tar_layer_is_rebuilt(
    tar_layer: tuple[Layout, bytes], tmp_path: Path, builder: Builder
) -> None:
    layout, tar = tar_layer
    settings = LayerSettings(mkfs=tar_mode_mkfs(), builder=builder)
    outcome, phases = _convert(layout, settings, tmp_path)
    report = outcome.report
    assert (report.kind, report.builder, report.tar_size, report.entries) == (
        "built",
        builder.value,
        len(tar),
        3,
    )
    assert report.source_digest == _layer(layout)[0]["digest"]
    assert report.media_type == mediatypes.EROFS_LAYER_ZSTD
    expected_phases = ["unpack", "mkfs", "pack"] if builder is Builder.DIR else ["mkfs", "pack"]
    assert list(report.phases or {}) == expected_phases
    assert phases == (
        [PHASE_READ, PHASE_MKFS, PHASE_PACK] if builder is Builder.DIR else [PHASE_READ, PHASE_PACK]
    )
    assert outcome.blob.parent == tmp_path / "blobs"
    assert sha256(outcome.blob.read_bytes()) == report.digest == outcome.pack.digest
    assert os.listdir(tmp_path / "work") == []


def test_a_diff_id_mismatch_leaves_nothing(tar_layer: tuple[Layout, bytes], tmp_path: Path) -> None:
    layout, _ = tar_layer
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DataError, match=f"but the image config lists diff_id {wrong}"):
        _convert(layout, LayerSettings(mkfs=tar_mode_mkfs()), tmp_path, diff_id=wrong)
    assert os.listdir(tmp_path / "work") == [] and os.listdir(tmp_path / "blobs") == []


@pytest.fixture
def erofs_layer(erofs_bytes: bytes, tmp_path: Path) -> tuple[Path, bytes, PackResult]:
    blob, packed = pack_bytes(erofs_bytes)
    image = Image([erofs_bytes], layer_blobs=[(packed.media_type, blob)])
    return build_layout(tmp_path / "src", [image]), blob, packed


def _with_annotations(layout_dir: Path, annotations: dict[str, str]) -> Layout:
    """The layout whose only manifest's layer descriptor carries ``annotations``."""
    from tests.oci_builder import LayoutBuilder

    layout = open_layout(layout_dir)
    [desc] = layout.index()["manifests"]
    manifest = layout.read_json(desc, "manifest")
    manifest["layers"][0]["annotations"] = annotations
    builder = LayoutBuilder(layout_dir)
    new = builder.json_blob(manifest, desc["mediaType"])
    builder.finish([{**new, "platform": desc["platform"]}])
    return open_layout(layout_dir)


def test_an_erofs_layer_is_rewrapped_and_its_chunk_digest_checked(
    erofs_layer: tuple[Path, bytes, PackResult], erofs_bytes: bytes, tmp_path: Path
) -> None:
    layout_dir, _, packed = erofs_layer
    layout = _with_annotations(layout_dir, packed.annotations)
    outcome, phases = _convert(layout, LayerSettings(), tmp_path / "out")
    report = outcome.report
    assert (report.kind, report.builder, report.tar_size, report.phases) == (
        "rewrapped",
        None,
        None,
        None,
    )
    assert report.diff_id == sha256(erofs_bytes)  # the filesystem is not rebuilt
    assert report.source_chunk_digest == "sha512"
    assert phases == [PHASE_REWRAP]


def test_a_wrong_chunk_digest_is_refused(
    erofs_layer: tuple[Path, bytes, PackResult], tmp_path: Path
) -> None:
    layout_dir, _, packed = erofs_layer
    notes = dict(packed.annotations)
    notes[seekable.ANNOTATION_TABLE_DIGEST] = "sha512:" + "0" * 128
    layout = _with_annotations(layout_dir, notes)
    with pytest.raises(DataError, match=r"chunk_digest annotation \(sha512\) does not match"):
        _convert(layout, LayerSettings(), tmp_path / "out")
    assert os.listdir(tmp_path / "out" / "blobs") == []
