"""A real containerd 2.3 pulling images ``convert`` wrote, through a real registry.

containerd 2.3 is the first release whose erofs differ hands zstd-wrapped
EROFS layers to a stream processor, and the release Kubernetes nodes pull
through. No package registry ships it, so these tests use the one whose bin
directory ``EROFS_SP_CONTAINERD23_BIN`` names (a user running 2.3 has one;
docs/containerd.md says how to have one during development) and skip with
one line without it. The daemon runs with a private root, state dir and
socket, debug logging (the erofs differ logs each layer it applied at debug
level), erofs-utils 1.8 on its PATH, and the snippet
``config --containerd-version 2.3`` prints.

Each image shape ``convert`` can write is pushed with skopeo to a private
CNCF distribution registry (Debian's ``docker-registry``) and pulled four
ways: ``ctr images pull`` (the transfer service) and ``ctr images pull
--local`` (the client's pull), each without ``--platform`` and with
``--platform 'linux(+erofs)/ARCH'``; and once through the kubelet's own call,
CRI's ``PullImage``, sent over gRPC to the daemon's CRI plugin (Debian 12 has
no crictl; the request is two protobuf fields, encoded here). ``ctr images
pull`` without ``--platform`` selects as CRI does, since both call the
transfer service with ``WithPlatforms(DefaultSpec())`` and
``WithUnpack(DefaultSpec(), snapshotter)`` (docs/containerd.md), so ``ctr
run`` after it stands for the pod. Each pull
records which differ path ran (the daemon's "Applied layer ..." lines), the
processor's log records, and the digests of the ``layer.erofs`` files it
left in the erofs snapshotter; the table ``EXPECTED`` is what a 2.3.4 does,
and what the README's matrix says.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stream_processor.containerd import configfile, executable, names, platforms, render, versions
from stream_processor.mediatypes import OCI_LAYER_TAR_ZSTD
from tests.builders import DISABLED_PLUGINS, manifests, write_wrapper
from tests.conftest import ROOT, tar_mode_mkfs
from tests.containerd_harness import Registry, log_records, start_registry
from tests.daemon_helpers import BIN_ENV, stop_daemon, wait_until_ready
from tests.oci_builder import (
    OCI_INDEX,
    RUN_CHECKS,
    RUN_EXPECTED,
    Image,
    LayoutBuilder,
    runnable_trees,
    tar_tree,
)

START_TIMEOUT = 30.0
APPLIED_EROFS = "Applied layer with compressed EROFS blob"  # plugins/diff/erofs/differ.go
APPLIED_TAR = "Applied layer using tar conversion mode"
HOST = platforms.host_platform()
ARCH = HOST.split("/")[1]
EROFS_PLATFORM = platforms.erofs_platform(HOST)


def _bin23() -> Path:
    value = os.environ.get(BIN_ENV)
    if not value:
        pytest.skip(f"{BIN_ENV} is not set: no containerd 2.3 bin directory to test against")
    path = Path(value)
    if not (path / "containerd").is_file() or not (path / "ctr").is_file():
        pytest.skip(f"{BIN_ENV}={value} has no containerd and ctr")
    return path


pytestmark = [
    pytest.mark.daemon,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root (snapshotters, mounts)"),
]


@dataclass
class Daemon23:
    bin: Path
    base: Path
    socket: Path
    root: Path
    log_file: Path
    daemon_log: Path

    def ctr(
        self, namespace: str, *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "ctr"), "--address", str(self.socket), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def records(self) -> list[dict[str, Any]]:
        return log_records(self.log_file)

    def layer_files(self) -> set[Path]:
        return set((self.root / names.EROFS_SNAPSHOTTER).glob("snapshots/*/layer.erofs"))


def snippet_23(wrapper: Path, log_file: Path) -> str:
    """Exactly what ``config --containerd-version 2.3 --log-level info`` prints for ``wrapper``."""
    profile = versions.profile_for("2.3")
    return render.render(
        render.SnippetOptions(
            profile=profile,
            executable=executable.Executable(str(wrapper)),
            routes=profile.default_routes(),
            log_file=str(log_file),
            log_level="info",
            platform=HOST,
        )
    )


CRI_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
)


def config_text(base: Path, snippet: str, disable: tuple[str, ...] = (), cri: bool = False) -> str:
    """The generated snippet plus a private root, state and socket, and debug logging.

    Without ``cri`` the Kubernetes plugins are off (``ctr`` stands in for the kubelet);
    with it they serve the CRI API on the daemon's socket, as on a node.
    """
    q = configfile.toml_string
    disabled = [*DISABLED_PLUGINS, *CRI_PLUGINS, *disable]
    if cri:
        disabled = [p for p in disabled if p not in CRI_PLUGINS]
    head = [
        f"root = {q(str(base / 'root'))}",
        f"state = {q(str(base / 'state'))}",
        "disabled_plugins = [" + ", ".join(q(p) for p in disabled) + "]",
    ]
    tail = f"""
[grpc]
  address = {q(str(base / "c.sock"))}

[ttrpc]
  address = {q(str(base / "c.sock.ttrpc"))}

[debug]
  level = "debug"
"""
    return "\n".join(head) + "\n" + snippet + tail


def start_daemon(
    bin23: Path, base: Path, snippet: str, disable: tuple[str, ...] = (), cri: bool = False
) -> tuple[subprocess.Popen[bytes], Daemon23]:
    mkfs = Path(tar_mode_mkfs())  # the erofs differ needs mkfs.erofs --tar for tar layers
    base.mkdir(parents=True, exist_ok=True)
    log_file = base / "processor.log"
    config = base / "config.toml"
    config.write_text(config_text(base, snippet, disable, cri))
    runc = shutil.which("runc") or "/usr/sbin/runc"
    path = f"{mkfs.parent}:{bin23}:{Path(runc).parent}:{os.environ['PATH']}"
    d = Daemon23(bin23, base, base / "c.sock", base / "root", log_file, base / "daemon.log")
    with open(d.daemon_log, "wb") as out:
        proc = subprocess.Popen(
            [str(bin23 / "containerd"), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PATH": path},
        )
    problem = wait_until_ready(
        proc,
        lambda: d.socket.exists() and d.ctr("default", "version").returncode == 0,
        d.daemon_log,
        START_TIMEOUT,
    )
    if problem:
        stop_daemon(proc)
        pytest.fail(f"containerd 2.3 {problem}")
    return proc, d


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon23]:
    bin23 = _bin23()
    version = subprocess.run(
        [str(bin23 / "containerd"), "--version"], capture_output=True, text=True
    ).stdout.split()
    if len(version) < 3 or not version[2].lstrip("v").startswith("2.3"):
        pytest.skip(f"{BIN_ENV} names containerd {' '.join(version[2:3])}, not 2.3")
    base = Path(tempfile.mkdtemp(prefix="sp-c23-"))  # short: unix socket paths are limited
    wrapper = write_wrapper(base / "bin")
    proc, d = start_daemon(bin23, base, snippet_23(wrapper, base / "processor.log"))
    try:
        check = subprocess.run(
            [sys.executable, "-m", "stream_processor", "config", "--check",
             str(base / "config.toml"), "--containerd-version", "2.3"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout  # the file the daemon runs passes --check
        plugins = d.ctr("default", "plugins", "ls").stdout
        for line in (
            "io.containerd.snapshotter.v1    erofs",
            "io.containerd.differ.v1        erofs",
        ):
            ok = [
                row
                for row in plugins.splitlines()
                if " ".join(line.split()) in " ".join(row.split())
            ]
            assert ok and ok[0].split()[-1] == "ok", plugins
        yield d
    finally:
        stop_daemon(proc)
        subprocess.run(["umount", "-R", str(base / "state")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    _bin23()  # without a 2.3 there is nothing to pull with: skip before any work
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    base = Path(tempfile.mkdtemp(prefix="sp-reg-"))
    reg = start_registry(binary, base)
    try:
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- images


@dataclass
class Shape:
    """One image shape in the registry: its reference and what its EROFS config promises."""

    name: str
    ref: str
    erofs_diff_ids: list[str]
    tar_diff_ids: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def _source_layout(root: Path, trees: list[Path]) -> Path:
    """tar+gzip layers under a nested image index, as ``skopeo copy --all`` stores a
    registry image: ``index.json`` -> image index -> manifest."""
    builder = LayoutBuilder(root)
    manifest = builder.image(Image([tar_tree(t) for t in trees], "gzip", architecture=ARCH))
    inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest]}
    return builder.finish([builder.json_blob(inner, OCI_INDEX)], ref="latest")


SHAPES = {
    # name: (convert options, skopeo --all)
    "plain": ((), True),  # convert's default: an index, no OS feature anywhere
    "feature": (("--os-feature", "erofs"), True),  # as ctr images convert --erofs writes
    "mixed": (("--keep-source",), True),  # tar manifest + EROFS manifest marked +erofs
    "bare": ((), False),  # the default shape pushed without --all: a bare manifest
}


@pytest.fixture(scope="module")
def shapes(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Shape]:
    base = tmp_path_factory.mktemp("c23-images")
    trees = runnable_trees(base / "trees", bulk=Path("/usr/share/zoneinfo"))
    src = _source_layout(base / "src", trees)
    out: dict[str, Shape] = {}
    for name, (options, all_images) in SHAPES.items():
        dst = base / name
        cmd = ["convert", str(src), str(dst), "--json", "--quiet", *options]
        proc = subprocess.run(
            [sys.executable, "-m", "stream_processor", *cmd],
            capture_output=True,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        report = json.loads(proc.stdout)
        found = [(m, c) for _, m, c in manifests(dst)]
        erofs = [
            c for m, c in found if m["layers"][0]["mediaType"].startswith("application/vnd.erofs")
        ]
        tar = [c for m, c in found if "tar" in m["layers"][0]["mediaType"]]
        ref = registry.push(dst, "latest", f"sp/{name}", all_images=all_images)
        out[name] = Shape(
            name,
            ref,
            erofs[0]["rootfs"]["diff_ids"],
            tar[0]["rootfs"]["diff_ids"] if tar else [],
            report,
        )
    return out


# ---------------------------------------------------------------- pulls


@dataclass
class Pull:
    """What one ``ctr images pull`` did, read from ctr, the daemon log and the snapshotter."""

    code: int
    error: str
    erofs_applied: int  # layers the erofs differ applied as compressed EROFS blobs
    tar_applied: int  # layers it built with mkfs.erofs --tar (the slow path)
    records: list[dict[str, Any]]
    layer_digests: list[str]  # sha256 of the layer.erofs files this pull created
    seconds: float

    def outcome(self, shape: Shape) -> str:
        """``processor``, ``mkfs``, ``both``, ``nothing`` or ``error: ...``."""
        if self.code != 0:
            return f"error: {self.error}"
        erofs = self.erofs_applied > 0
        tar = self.tar_applied > 0
        if erofs and tar:
            return "both"
        if erofs:
            return "processor"
        return "mkfs" if tar else "nothing"


MODES = {
    "transfer": (),  # ctr images pull: the transfer service, as CRI pulls
    "transfer+erofs": ("--platform", EROFS_PLATFORM),
    "local": ("--local",),  # the client's pull and unpack (diff service)
    "local+erofs": ("--local", "--platform", EROFS_PLATFORM),
}


def pull(
    daemon: Daemon23, namespace: str, ref: str, *flags: str, snapshotter: str = "erofs"
) -> Pull:
    log_at = daemon.daemon_log.stat().st_size
    records_at = len(daemon.records())
    files_before = daemon.layer_files()
    started = time.monotonic()
    result = daemon.ctr(
        namespace, "images", "pull", "--plain-http", "--snapshotter", snapshotter, *flags, ref
    )
    seconds = time.monotonic() - started
    with open(daemon.daemon_log, "rb") as fh:
        fh.seek(log_at)
        log = fh.read().decode("utf-8", "replace")
    new_files = sorted(daemon.layer_files() - files_before)
    digests = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in new_files]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # ctr's own error line; a log line of its progress stream ("progress stream failed to
    # recv ... context canceled") may come after it when the pull fails early
    errors = [line for line in lines if line.startswith("ctr: ")] or lines
    return Pull(
        result.returncode,
        errors[-1] if errors else "",
        log.count(APPLIED_EROFS),
        log.count(APPLIED_TAR),
        daemon.records()[records_at:],
        digests,
        seconds,
    )


# What containerd 2.3.4 does with each shape and pull path, with the generated config
# (both unpack platforms, erofs snapshotter and differ): "processor" = every layer
# went through this processor and the erofs differ stored it as is; "mkfs" = the
# source tar manifest was chosen and the differ built each layer.erofs with
# mkfs.erofs --tar; "both" = both manifests were unpacked; "nothing" = the pull
# succeeded and unpacked no layer. The README's matrix is this table.
EXPECTED: dict[tuple[str, str], str] = {
    ("plain", "transfer"): "processor",
    ("plain", "transfer+erofs"): "processor",
    ("plain", "local"): "processor",
    ("plain", "local+erofs"): "processor",
    ("bare", "transfer"): "processor",
    ("bare", "transfer+erofs"): "processor",
    ("bare", "local"): "processor",
    ("bare", "local+erofs"): "processor",
    ("feature", "transfer"): "nothing",
    ("feature", "transfer+erofs"): "processor",
    ("feature", "local"): "error: ctr: no match for platform in manifest",
    ("feature", "local+erofs"): "error: ctr: snapshotter erofs does not support platform",
    ("mixed", "transfer"): "mkfs",
    ("mixed", "transfer+erofs"): "both",
    ("mixed", "local"): "mkfs",
    ("mixed", "local+erofs"): "error: ctr: snapshotter erofs does not support platform",
}
# What CRI does next, after its transfer-service pull: it reads the image's config
# through the default platform matcher (image.Config), as `ctr run` without
# --platform does; for the feature shape that is where a kubelet's pull fails.
RUN_DEFAULT = {
    "plain": "ok",
    "bare": "ok",
    "mixed": "ok",
    "feature": "no match for platform in manifest",
}


def _check_layers(got: Pull, shape: Shape) -> None:
    """Every layer went through the processor and is stored as the image the config names."""
    assert got.erofs_applied == len(shape.erofs_diff_ids), got
    assert [(r["media_type"], r["payload"], r["exit_code"]) for r in got.records] == [
        (OCI_LAYER_TAR_ZSTD, "erofs", 0)
    ] * len(shape.erofs_diff_ids), got.records
    assert set(shape.erofs_diff_ids) <= set(got.layer_digests), got.layer_digests


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_pull_matrix(
    daemon: Daemon23, shapes: dict[str, Shape], shape_name: str, mode: str
) -> None:
    shape = shapes[shape_name]
    namespace = f"{shape_name}-{mode.replace('+', '-')}"
    got = pull(daemon, namespace, shape.ref, *MODES[mode])
    expected = EXPECTED[(shape_name, mode)]
    assert got.outcome(shape).startswith(expected), got
    if expected in ("processor", "both"):
        _check_layers(got, shape)
    if expected == "both":  # the tar manifest's layers too, built on the node by mkfs.erofs
        assert got.tar_applied == len(shape.tar_diff_ids), got
        assert len(got.layer_digests) == 2 * len(shape.erofs_diff_ids), got
    if expected == "mkfs":
        assert got.records == [] and got.tar_applied == len(shape.tar_diff_ids), got
        assert not set(shape.erofs_diff_ids) & set(got.layer_digests), got
    if expected == "nothing":
        assert got.records == [] and got.layer_digests == [], got
    if mode == "transfer":  # the kubelet's path: pull, then a container from the image
        run = daemon.ctr(namespace, "run", "--rm", "--snapshotter", "erofs", shape.ref,
                         f"run-{shape_name}", "/bin/sh", "-c", RUN_CHECKS)  # fmt: skip
        if RUN_DEFAULT[shape_name] == "ok":
            assert (run.returncode, run.stdout) == (0, RUN_EXPECTED), run
        else:
            assert run.returncode != 0 and RUN_DEFAULT[shape_name] in run.stderr, run


def test_feature_shape_runs_with_erofs_platform(daemon: Daemon23, shapes: dict[str, Shape]) -> None:
    """The +erofs shape pulls and runs with --platform 'linux(+erofs)/ARCH' everywhere."""
    shape = shapes["feature"]
    got = pull(daemon, "feature-run", shape.ref, "--platform", EROFS_PLATFORM)
    _check_layers(got, shape)
    run = daemon.ctr("feature-run", "run", "--rm", "--snapshotter", "erofs",
                     "--platform", EROFS_PLATFORM, shape.ref, "run-feature",
                     "/bin/sh", "-c", RUN_CHECKS)  # fmt: skip
    assert (run.returncode, run.stdout) == (0, RUN_EXPECTED), run


def test_one_unpack_platform_drops_erofs_images_and_check_says_so(
    shapes: dict[str, Shape], tmp_path: Path
) -> None:
    """What this tool wrote before 2.3 was observed: unpack_config with linux/ARCH only.

    It replaces containerd's two defaults, so a pull for linux(+erofs)/ARCH finds
    no unpack platform at all; ``config --check`` names that file.
    """
    bin23 = _bin23()
    base = Path(tempfile.mkdtemp(prefix="sp-c23b-"))
    try:
        full = snippet_23(write_wrapper(base / "bin"), base / "processor.log")
        featured = "\n".join(render.unpack_entry(EROFS_PLATFORM)) + "\n"
        assert featured in full
        old = full.replace(featured, "")
        (base / "merged.toml").write_text(config_text(base, old))
        check = subprocess.run(
            [sys.executable, "-m", "stream_processor", "config", "--check",
             str(base / "merged.toml"), "--containerd-version", "2.3"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert check.returncode == 1, check.stdout
        assert f"no linux(+erofs)/ARCH platform (only {HOST})" in check.stdout, check.stdout
        proc, d = start_daemon(bin23, base, old)
        try:
            got = pull(d, "old", shapes["feature"].ref, "--platform", EROFS_PLATFORM)
            assert got.code != 0 and "no unpack platforms defined" in got.error, got
            assert got.records == [] and got.layer_digests == []
        finally:
            stop_daemon(proc)
    finally:
        subprocess.run(["umount", "-R", str(base / "state")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_node_without_erofs_snapshotter(shapes: dict[str, Shape], tmp_path: Path) -> None:
    """What a 2.3 node without the erofs snapshotter shows (the README's Kubernetes section).

    With containerd's own defaults (overlayfs, walking differ) the EROFS layer reaches the
    walking differ, which has no processor for it. With this tool's snippet but the erofs
    plugins missing, the transfer service (which ``ctr images pull`` and CRI use) does not
    load at all, because its unpack_config names the erofs snapshotter.
    """
    bin23 = _bin23()
    ref = shapes["plain"].ref
    base = Path(tempfile.mkdtemp(prefix="sp-c23n-"))
    try:
        proc, d = start_daemon(bin23, base / "stock", "version = 3\n")
        try:
            got = pull(d, "stock", ref, snapshotter="overlayfs")
            assert got.code != 0 and "to overlayfs" in got.error, got
            assert (
                "failed to get stream processor for application/vnd.erofs.layer.v1+zstd: "
                "no processor for media-type" in got.error
            ), got
        finally:
            stop_daemon(proc)
        snippet = snippet_23(write_wrapper(base / "bin"), base / "processor.log")
        missing = (names.EROFS_SNAPSHOTTER, names.EROFS_DIFFER)
        proc, d = start_daemon(bin23, base / "ours", snippet, missing)
        try:
            got = pull(d, "ours", ref)
            assert got.code != 0, got
            assert "unknown service containerd.services.transfer.v1.Transfer" in got.error, got
        finally:
            stop_daemon(proc)
    finally:
        for state in base.glob("*/state"):
            subprocess.run(["umount", "-R", str(state)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- the kubelet's own call


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: tag (wire type 2), varint length, bytes."""
    size = len(payload)
    varint = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(varint) + payload


def cri_pull_image(socket: Path, ref: str, timeout: float = 300) -> tuple[int, str]:
    """The kubelet's ``runtime.v1.ImageService/PullImage`` over the daemon's socket.

    ``PullImageRequest{image: ImageSpec{image: ref}}`` is encoded by hand (two nested
    fields), so no CRI stubs are needed; the answer is ``(0, image_ref)`` or the gRPC
    status code and its details.
    """
    import grpc

    request = _field(1, _field(1, ref.encode()))
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        call = channel.unary_unary("/runtime.v1.ImageService/PullImage")
        try:
            reply: bytes = call(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().value[0], exc.details() or ""
    assert reply[:1] == b"\x0a", reply  # PullImageResponse.image_ref, field 1
    return 0, reply[2 : 2 + reply[1]].decode()


# What CRI's PullImage does with each shape on a node configured by `config`: it matches
# and unpacks for platforms.DefaultSpec() (docs/containerd.md), so the default shapes go
# through the processor, the mixed index is pulled as its tar manifest (mkfs.erofs on the
# node) and the +erofs-only index is refused.
CRI_EXPECTED = {
    "plain": "processor",
    "bare": "processor",
    "mixed": "mkfs",
    "feature": "error: get image config descriptor: no match for platform in manifest",
}


@pytest.fixture
def cri_daemon() -> Iterator[Daemon23]:
    """A daemon per pull: CRI has one namespace, and shapes share layers (and so snapshots)."""
    bin23 = _bin23()
    pytest.importorskip("grpc", reason="grpcio (the dev extra) makes the CRI call")
    base = Path(tempfile.mkdtemp(prefix="sp-c23k-"))
    wrapper = write_wrapper(base / "bin")
    proc, d = start_daemon(bin23, base, snippet_23(wrapper, base / "processor.log"), cri=True)
    try:
        yield d
    finally:
        stop_daemon(proc)
        subprocess.run(["umount", "-R", str(base / "state")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_cri_pull_image(cri_daemon: Daemon23, shapes: dict[str, Shape], shape_name: str) -> None:
    """The call a kubelet makes, against the CRI plugin of a real 2.3 with our config."""
    shape = shapes[shape_name]
    d = cri_daemon
    log_at = d.daemon_log.stat().st_size
    records_at = len(d.records())
    files_before = d.layer_files()
    code, answer = cri_pull_image(d.socket, shape.ref)
    with open(d.daemon_log, "rb") as fh:
        fh.seek(log_at)
        log = fh.read().decode("utf-8", "replace")
    new_files = sorted(d.layer_files() - files_before)
    got = Pull(
        code,
        answer,
        log.count(APPLIED_EROFS),
        log.count(APPLIED_TAR),
        d.records()[records_at:],
        ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in new_files],
        0.0,
    )
    expected = CRI_EXPECTED[shape_name]
    assert got.outcome(shape).startswith(expected), got
    if expected == "processor":
        assert answer.startswith("sha256:"), answer  # the image id CRI hands the kubelet
        _check_layers(got, shape)
        listed = d.ctr("k8s.io", "images", "ls", "-q").stdout.split()
        assert shape.ref in listed, listed
    if expected == "mkfs":
        assert got.records == [] and got.tar_applied == len(shape.tar_diff_ids), got
