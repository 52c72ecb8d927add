"""A real containerd 2.x before 2.3 (Debian unstable's 2.1) with its erofs snapshotter and differ.

The "<= 2.2" row of docs/containerd.md section 1 is observed here, not read.
``.ci/fetch-containerd`` puts Debian unstable's containerd (2.1.x)
under ``.tools/`` and these tests run it with a private root, state and
socket, the erofs snapshotter and the erofs differ (with erofs-utils 1.8's
``mkfs.erofs`` from ``.ci/fetch-erofs-utils`` on its PATH), and this
processor registered by the snippet ``config --containerd-version 2.1``
prints, plus a hand-written entry for ``application/vnd.erofs.layer.v1+zstd``.

What they pin down:

- the tar+zstd route: the processor is called, passes the tar through, and
  the erofs differ turns it into the snapshot's ``layer.erofs``;
- EROFS layers (as ``convert`` writes them, +zstd and +gzip) never reach a processor:
  the default shape is selected and the unpacker refuses it ("mismatched image rootfs
  and manifest layers": it does not count EROFS media types as layers); with
  ``--os-feature erofs`` the default platform skips the manifest and
  ``linux(+erofs)/ARCH`` selects it, to the same refusal; the transfer service
  imports it without unpacking.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stream_processor import superblock
from stream_processor.containerd import configfile, platforms
from stream_processor.mediatypes import EROFS_LAYER_ZSTD, OCI_LAYER_TAR_ZSTD
from tests.builders import (
    DISABLED_PLUGINS,
    build_oci_archive,
    describe_tree,
    tar_zstd_snippet,
    write_wrapper,
)
from tests.conftest import ROOT, make_tree, require_fetched, tar_mode_mkfs
from tests.containerd_harness import log_records
from tests.daemon_helpers import CONTAINERD_21_BIN, stop_daemon, wait_until_ready
from tests.oci_builder import Image, build_layout, tar_tree

pytestmark = [
    pytest.mark.daemon,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root (snapshotters, mounts)"),
]

START_TIMEOUT = 20.0


@dataclass
class Daemon2:
    base: Path
    socket: Path
    root: Path
    log_file: Path
    version: tuple[int, int]

    def ctr(self, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CONTAINERD_21_BIN / "ctr"), "--address", str(self.socket), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def records(self) -> list[dict[str, Any]]:
        return log_records(self.log_file)


def config_text(base: Path, wrapper: Path, log_file: Path) -> str:
    """The generated 2.1 snippet, a hand-written erofs+zstd entry, and a private daemon."""
    snippet = tar_zstd_snippet("2.1", wrapper, log_file)
    q = configfile.toml_string
    disabled = [*DISABLED_PLUGINS, "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
    head = [
        f"root = {q(str(base / 'root'))}",
        f"state = {q(str(base / 'state'))}",
        "disabled_plugins = [" + ", ".join(q(p) for p in disabled) + "]",
    ]
    tail = f"""
[stream_processors."io.containerd.processor.v1.erofs-zstd-by-hand"]
  accepts = [{q(EROFS_LAYER_ZSTD)}]
  returns = "application/vnd.oci.image.layer.v1.tar"
  path = {q(str(wrapper))}
  env = [{q("EROFS_SP_LOG_FILE=" + str(log_file))}, "EROFS_SP_LOG_LEVEL=info"]

[grpc]
  address = {q(str(base / "c.sock"))}

[ttrpc]
  address = {q(str(base / "c.sock.ttrpc"))}

[plugins."io.containerd.service.v1.diff-service"]
  default = ["erofs", "walking"]

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = {q(platforms.host_platform())}
    snapshotter = "erofs"
    differ = "erofs"
"""
    return "\n".join(head) + "\n" + snippet + tail


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon2]:
    require_fetched(CONTAINERD_21_BIN / "containerd", ".ci/fetch-containerd")
    mkfs = Path(tar_mode_mkfs())  # the erofs differ runs mkfs.erofs --tar
    out = subprocess.run(
        [str(CONTAINERD_21_BIN / "containerd"), "--version"], capture_output=True, text=True
    ).stdout
    version = tuple(int(x) for x in out.split()[2].split(".")[:2])
    base = Path(tempfile.mkdtemp(prefix="sp-c2-"))  # short: unix socket paths are limited
    log_file = base / "processor.log"
    config = base / "config.toml"
    config.write_text(config_text(base, write_wrapper(base / "bin"), log_file))
    env = {**os.environ, "PATH": f"{mkfs.parent}:{CONTAINERD_21_BIN}:{os.environ['PATH']}"}
    with open(base / "daemon.log", "wb") as daemon_log:
        proc = subprocess.Popen(
            [str(CONTAINERD_21_BIN / "containerd"), "--config", str(config)],
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        d = Daemon2(base, base / "c.sock", base / "root", log_file, (version[0], version[1]))
        try:
            problem = wait_until_ready(
                proc,
                lambda: d.socket.exists() and d.ctr("default", "version").returncode == 0,
                base / "daemon.log",
                START_TIMEOUT,
            )
            if problem:
                pytest.fail(f"{out.strip()} {problem}")
            yield d
        finally:
            stop_daemon(proc)
            subprocess.run(["umount", "-R", str(base / "state")], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)


def test_tar_zstd_layer_goes_through_processor_and_erofs_differ(
    daemon: Daemon2, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    archive = build_oci_archive(tree, tmp_path / "img", "example.test/tarzstd:latest")
    before = len(daemon.records())
    result = daemon.ctr("tz", "images", "import", "--local", "--snapshotter", "erofs",
                        str(archive.path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = daemon.records()[before:]
    assert [(r["media_type"], r["payload"], r["exit_code"]) for r in records] == [
        (OCI_LAYER_TAR_ZSTD, "tar", 0)
    ]
    assert records[0]["bytes_out"] == archive.tar.stat().st_size
    # the erofs differ built the snapshot's layer.erofs from the tar we passed through
    layers = sorted((daemon.root / "io.containerd.snapshotter.v1.erofs").rglob("layer.erofs"))
    assert len(layers) == 1, layers
    image = layers[0].read_bytes()
    assert superblock.validate(image[:65536]).image_size == len(image)
    extracted = tmp_path / "extracted"
    fsck = subprocess.run(["fsck.erofs", f"--extract={extracted}", str(layers[0])],
                          capture_output=True, text=True)  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert describe_tree(extracted) == describe_tree(tree)


@pytest.fixture(scope="module", params=["zstd", "gzip"])
def erofs_archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A two-layer image as ``convert`` writes it (erofs+zstd or +gzip), in its default shape
    (no OS feature) and with ``--os-feature erofs``."""
    base = tmp_path_factory.mktemp("erofs-image")
    trees = [make_tree(base / "t1"), make_tree(base / "t2", scale=2)]
    arch = platforms.host_platform().split("/")[1]
    src = build_layout(base / "src", [Image([tar_tree(t) for t in trees], "gzip",
                                            architecture=arch)], ref="latest")  # fmt: skip
    out = {}
    for shape, extra in (("plain", []), ("feature", ["--os-feature", "erofs"])):
        out[shape] = base / f"{shape}.tar"
        cmd = [sys.executable, "-m", "stream_processor", "convert", str(src), str(out[shape])]
        cmd += ["--archive", "--compression", request.param, *extra]
        proc = subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=240)
        assert proc.returncode == 0, proc.stderr.decode()
    return out


def test_erofs_layers_never_reach_a_processor_before_2_3(
    daemon: Daemon2, erofs_archive: dict[str, Path]
) -> None:
    if daemon.version >= (2, 3):
        pytest.skip(f"Debian unstable now ships containerd {daemon.version}; this pins <= 2.2")
    before = len(daemon.records())
    host = platforms.host_platform()
    os_name, arch = host.split("/")
    name = ("--base-name", "example.test/erofs")
    local = ("images", "import", "--local", "--snapshotter", "erofs", *name)
    # the default shape is selected, and the unpacker refuses the layers outright
    plain = daemon.ctr("e1", *local, str(erofs_archive["plain"]))
    assert plain.returncode != 0, plain
    assert "mismatched image rootfs and manifest layers" in plain.stderr, plain.stderr
    # the default platform (no OS features) does not select a manifest that needs 'erofs'
    skipped = daemon.ctr("e2", *local, str(erofs_archive["feature"]))
    assert skipped.returncode != 0 and "image might be filtered out" in skipped.stderr, skipped
    # naming the feature selects it, and the unpacker refuses it the same way
    featured = daemon.ctr("e3", *local, "--platform", f"{os_name}(+erofs)/{arch}",
                          str(erofs_archive["feature"]))  # fmt: skip
    assert featured.returncode != 0, featured
    assert "mismatched image rootfs and manifest layers" in featured.stderr, featured.stderr
    # the transfer service imports the image and silently leaves it unpacked
    transfer = daemon.ctr("e4", "images", "import", "--all-platforms", "--snapshotter", "erofs",
                          *name, str(erofs_archive["plain"]))  # fmt: skip
    assert transfer.returncode == 0, transfer.stderr
    check = daemon.ctr("e4", "images", "check")
    assert "example.test/erofs:latest" in check.stdout and check.stdout.rstrip().endswith("false")
    # and in none of these did containerd start a processor for an EROFS layer
    assert daemon.records()[before:] == []
