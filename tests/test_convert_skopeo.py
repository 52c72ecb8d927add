"""``convert`` against a real peer: Debian's skopeo writes the sources and reads the results.

skopeo writes the OCI layout and ``oci-archive`` that ``convert`` reads (as
users make them with ``skopeo copy docker://... oci:DIR``), and reads what
``convert`` writes: ``skopeo copy`` checks every blob's digest and size on the
way, ``skopeo inspect`` parses the manifest and config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stream_processor import mediatypes
from tests.builders import rich_tree
from tests.oci_builder import Image, build_layout, tar_tree
from tests.processor import run_cli

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the source tree has owners and devices: root"),
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed"),
]

EROFS_ZSTD = mediatypes.EROFS_LAYER_ZSTD


def skopeo(*args: str) -> str:
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def skopeo_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same two-layer image as skopeo writes it: ``oci:`` and ``oci-archive:``."""
    base = tmp_path_factory.mktemp("skopeo")
    tree = rich_tree(base / "tree")
    top = base / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / ".wh.owned").write_bytes(b"")
    (top / "srv").mkdir()
    (top / "srv" / "app").write_text("app\n")
    ours = build_layout(base / "ours", [Image([tar_tree(tree), tar_tree(top)], "gzip")])
    skopeo("copy", "--quiet", f"oci:{ours}", f"oci:{base / 'layout'}:app:1")
    skopeo("copy", "--quiet", f"oci:{ours}", f"oci-archive:{base / 'image.tar'}:app:1")
    return {"oci": base / "layout", "oci-archive": base / "image.tar"}


@pytest.mark.parametrize("kind", ["oci", "oci-archive"])
def test_skopeo_written_source_converts_and_skopeo_reads_the_result(
    skopeo_sources: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "out"
    proc = run_cli(["convert", str(skopeo_sources[kind]), str(out), "--quiet"], timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{out}:app:1"))
    assert [layer["mediaType"] for layer in manifest["layers"]] == [EROFS_ZSTD] * 2
    config = json.loads(skopeo("inspect", "--config", f"oci:{out}:app:1"))
    assert len(config["rootfs"]["diff_ids"]) == 2
    copied = tmp_path / "copied"
    skopeo("copy", "--quiet", f"oci:{out}:app:1", f"dir:{copied}")  # checks every digest
    for layer in manifest["layers"]:
        assert (copied / layer["digest"].split(":")[1]).stat().st_size == layer["size"]


def test_skopeo_reads_the_archive_convert_writes(
    skopeo_sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.tar"
    proc = run_cli(["convert", str(skopeo_sources["oci"]), str(out), "--archive", "--quiet"])
    assert proc.returncode == 0, proc.stderr.decode()
    copied = tmp_path / "copied"
    skopeo("copy", "--quiet", f"oci-archive:{out}", f"dir:{copied}")
    manifest = json.loads((copied / "manifest.json").read_text())
    assert [layer["mediaType"] for layer in manifest["layers"]] == [EROFS_ZSTD] * 2
