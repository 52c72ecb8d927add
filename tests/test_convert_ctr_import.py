"""A converted ``--archive`` image is accepted by a real containerd's ``ctr images import``.

Starts Debian's containerd 1.6 with a private root, state and socket (no
effect on any other daemon), imports the converted oci-archive with
``--no-unpack`` (1.6 has no EROFS differ to unpack with) and checks that the
image, its manifest and every new layer blob are in the content store with
the digests ``convert`` wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_processor.mediatypes import EROFS_LAYER_ZSTD
from tests.builders import rich_tree
from tests.oci_builder import Image, build_layout, tar_tree
from tests.processor import run_cli

pytestmark = [
    pytest.mark.daemon,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd runs as root"),
    pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd is not installed"),
]


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    base = Path("/tmp") / f"ctrd-convert-{os.getpid()}"  # short: unix socket paths are limited
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    sock = base / "c.sock"
    config = base / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  level = "warn"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
    )
    log = (tmp_path / "containerd.log").open("wb")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(
                    f"containerd did not start: {(tmp_path / 'containerd.log').read_text()}"
                )
            time.sleep(0.1)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        subprocess.run(["umount", "-R", str(base / "state")], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def ctr(sock: Path, *args: str) -> str:
    proc = subprocess.run(
        ["ctr", "--address", str(sock), "--namespace", "convert-test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_ctr_imports_the_converted_archive(containerd: Path, tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    src = build_layout(tmp_path / "src", [Image([tar_tree(tree)], "gzip")], ref="latest")
    out = tmp_path / "out.tar"
    proc = run_cli(["convert", str(src), str(out), "--archive"])
    assert proc.returncode == 0, proc.stderr.decode()
    ctr(containerd, "images", "import", "--base-name", "example.test/conv", "--no-unpack",
        "--all-platforms", str(out))  # fmt: skip
    images = ctr(containerd, "images", "ls")
    assert "example.test/conv:latest" in images
    unpacked = tmp_path / "layout"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(unpacked)], check=True)
    index = json.loads((unpacked / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    assert manifest_digest in images
    content = ctr(containerd, "content", "ls")
    manifest = json.loads(
        (unpacked / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_text()
    )
    for layer in manifest["layers"]:
        assert layer["mediaType"] == EROFS_LAYER_ZSTD
        assert layer["digest"] in content


def test_converts_what_ctr_exports(containerd: Path, tmp_path: Path) -> None:
    """``ctr images export`` output (index.json + manifest.json + blobs) converts."""
    from tests.builders import manifests
    from tests.oci_builder import archive_layout

    tree = rich_tree(tmp_path / "tree")
    src = build_layout(tmp_path / "src", [Image([tar_tree(tree)], "gzip")], ref="latest")
    archive = archive_layout(src, tmp_path / "src.tar")
    ctr(containerd, "images", "import", "--base-name", "example.test/src", "--no-unpack",
        "--all-platforms", str(archive))  # fmt: skip
    exported = tmp_path / "exported.tar"
    ctr(containerd, "images", "export", "--all-platforms", str(exported),
        "example.test/src:latest")  # fmt: skip
    out = tmp_path / "out"
    proc = run_cli(["convert", str(exported), str(out)])
    assert proc.returncode == 0, proc.stderr.decode()
    [(entry, manifest, _)] = manifests(out)
    assert manifest["layers"][0]["mediaType"] == EROFS_LAYER_ZSTD
    assert "os.features" not in entry["platform"]
