"""``convert.converter``: shapes, the plan of an image, the report, the worker board.

Whole conversions through the CLI are in test_convert_image and
test_convert_edges; these pin the pieces' logic on small layouts.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from stream_processor.convert.converter import (
    EROFS_FEATURE,
    ConvertOptions,
    ConvertReport,
    ManifestRow,
    _Board,
    _Plan,
    _prepare_destination,
    _with_features,
    convert_image,
)
from stream_processor.convert.layers import LayerReport, LayerSettings
from stream_processor.convert.oci import OCI_INDEX, Platform, open_layout
from stream_processor.errors import DataError, UsageError
from tests.conftest import tar_mode_mkfs
from tests.oci_builder import Image, LayoutBuilder, build_layout, tar_tree


def test_shapes_and_features() -> None:
    assert (ConvertOptions().shape, ConvertOptions().features()) == ("plain", ())
    marked = ConvertOptions(os_features=(EROFS_FEATURE,))
    assert (marked.shape, marked.features()) == ("os-feature", ("erofs",))
    mixed = ConvertOptions(keep_source=True)
    assert (mixed.shape, mixed.features()) == ("mixed", ("erofs",))


def test_with_features_drops_a_stale_erofs_and_keeps_the_rest() -> None:
    platform = {"os": "linux", "architecture": "amd64", "os.features": ["erofs", "win32k"]}
    assert _with_features(platform, ()) == {"os": "linux", "architecture": "amd64",
                                            "os.features": ["win32k"]}  # fmt: skip
    assert _with_features({"os": "linux"}, ()) == {"os": "linux"}
    assert _with_features({"os": "linux"}, ("erofs",)) == {"os": "linux", "os.features": ["erofs"]}


def _layer_report(tar_size: int | None) -> LayerReport:
    return LayerReport(
        source_digest="sha256:s",
        source_media_type="m",
        source_size=10,
        kind="built" if tar_size is not None else "rewrapped",
        tar_size=tar_size,
        erofs_size=4096,
        wrapped_size=1024,
        media_type="application/vnd.erofs.layer.v1+zstd",
        digest="sha256:d",
        diff_id="sha256:i",
        seconds=0.5,
    )


def test_report_json_keeps_its_keys_in_order_and_summary_counts() -> None:
    row = ManifestRow("erofs", "linux/amd64", [], "sha256:src", "sha256:new")
    report = ConvertReport(
        "src", "dst", "zstd", 4 << 20, 2, manifests=[row],
        layers=[_layer_report(8192), _layer_report(None)], seconds=1.25,
    )  # fmt: skip
    doc = report.as_json()
    assert list(doc) == [
        "source", "destination", "compression", "chunk_size", "jobs", "shape", "os_features",
        "builder", "mkfs", "seconds", "manifests", "layers", "skipped",
    ]  # fmt: skip
    assert doc["manifests"] == [
        {"kind": "erofs", "platform": "linux/amd64", "os_features": [],
         "source_digest": "sha256:src", "digest": "sha256:new"}
    ]  # fmt: skip
    assert list(doc["layers"][0])[:3] == ["source_digest", "source_media_type", "source_size"]
    json.dumps(doc)  # plain JSON types only
    assert report.summary() == (
        "converted 2 layer(s) in 1 manifest(s), plain index: 1 rebuilt from tar 8 KiB -> "
        "erofs 4 KiB, 1 EROFS re-wrapped (erofs 4 KiB) -> zstd 2 KiB in 1.25 s -> dst"
    )


# ---------------------------------------------------------------- plan


def _tar(tree: Path, text: str) -> bytes:
    tree.mkdir()
    (tree / "file").write_text(text)
    return tar_tree(tree)


@pytest.fixture
def two_platforms(tmp_path: Path) -> Path:
    """amd64 and arm64/v8 sharing their first layer, an attestation, and an index nested."""
    shared, amd_only = _tar(tmp_path / "t1", "shared"), _tar(tmp_path / "t2", "amd only")
    builder = LayoutBuilder(tmp_path / "src")
    amd = builder.image(Image([shared, amd_only], "gzip"))
    arm = builder.image(Image([shared], "gzip", architecture="arm64", variant="v8"))
    attestation = dict(arm, platform={"os": "unknown", "architecture": "unknown"})
    nested = builder.json_blob(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [arm, attestation]}, OCI_INDEX
    )
    other = {"mediaType": "application/vnd.example+json", "digest": "sha256:" + "0" * 64, "size": 1}
    return builder.finish([amd, nested, other])


def _plan(path: Path, *platforms: str) -> tuple[_Plan, Any]:
    layout = open_layout(path)
    plan = _Plan(layout, tuple(Platform.parse(p) for p in platforms))
    return plan, plan.index(layout.index(), None)


def test_plan_walks_nested_indexes_and_deduplicates_layers(two_platforms: Path) -> None:
    plan, top = _plan(two_platforms)
    assert len(top.entries) == 2 and len(top.entries[1].entries) == 1
    assert len(plan.layers) == 2  # "shared" once
    assert plan.seen_platforms == ["linux/amd64", "linux/arm64/v8"]
    assert [s.split(": ", 1)[1] for s in plan.skipped] == [
        "attestation manifest (platform unknown)",
        "not an image manifest",
    ]


def test_plan_keeps_only_the_wanted_platforms(two_platforms: Path) -> None:
    plan, top = _plan(two_platforms, "linux/aarch64")
    assert len(top.entries) == 1 and len(plan.layers) == 1  # only the nested arm64 index
    plan, top = _plan(two_platforms, "linux/s390x")
    assert top.entries == [] and plan.seen_platforms == ["linux/amd64", "linux/arm64/v8"]


def test_plan_refuses_diff_ids_that_do_not_fit(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "src")
    image = Image([b"one"], layer_blobs=[("application/vnd.oci.image.layer.v1.tar", b"a")] * 2)
    builder.finish([builder.image(image)])
    with pytest.raises(DataError, match="lists 1 diff_ids for 2 layers"):
        _plan(builder.root)


def test_plan_refuses_an_unknown_layer_type_before_any_work(tmp_path: Path) -> None:
    src = build_layout(tmp_path / "src", [Image([b"x"], layer_blobs=[("text/plain", b"x")])])
    with pytest.raises(UsageError, match="cannot convert a layer of media type 'text/plain'"):
        _plan(src)


def test_plan_refuses_indexes_nested_too_deep(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "src")
    desc = builder.image(Image([b"x"]))
    for _ in range(9):
        desc = builder.json_blob(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]}, OCI_INDEX
        )
    builder.finish([desc])
    with pytest.raises(DataError, match="nested more than 8 deep"):
        _plan(builder.root)


# ---------------------------------------------------------------- destination, workers


def test_prepare_destination_refuses_what_it_would_overwrite(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    (tmp_path / "file.tar").write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists and is not an empty directory"):
        _prepare_destination(tmp_path / "full", archive=False)
    with pytest.raises(UsageError, match="already exists; refusing to overwrite it"):
        _prepare_destination(tmp_path / "file.tar", archive=True)
    with pytest.raises(UsageError, match="is not a directory"):
        _prepare_destination(tmp_path / "missing" / "out", archive=False)
    (tmp_path / "empty").mkdir()
    _prepare_destination(tmp_path / "empty", archive=False)
    _prepare_destination(tmp_path / "new.tar", archive=True)


def _in_child(board: _Board) -> None:
    board.set(1, _Board.BYTES, 12345)


def test_board_is_shared_with_forked_workers() -> None:
    board = _Board(2)
    assert [board.get(s, _Board.PHASE) for s in (0, 1)] == [-1, -1]  # queued
    assert not board.stopping
    child = multiprocessing.get_context("fork").Process(target=_in_child, args=(board,))
    child.start()
    child.join()
    assert board.get(1, _Board.BYTES) == 12345 and board.get(0, _Board.BYTES) == 0
    board.stop()
    assert board.stopping


def test_one_worker_and_two_give_the_same_image(two_platforms: Path, tmp_path: Path) -> None:
    settings = LayerSettings(mkfs=tar_mode_mkfs())
    reports = []
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        reports.append(convert_image(two_platforms, out, ConvertOptions(settings, jobs=jobs)))
    assert (tmp_path / "out1" / "index.json").read_bytes() == (
        tmp_path / "out2" / "index.json"
    ).read_bytes()
    one, two = (r.as_json() for r in reports)
    assert [m["platform"] for m in one["manifests"]] == ["linux/amd64", "linux/arm64/v8"]
    assert one["manifests"] == two["manifests"]
    assert [layer["digest"] for layer in one["layers"]] == [
        layer["digest"] for layer in two["layers"]
    ]
