"""``convert`` end to end: real OCI layouts in, EROFS-layer images out, checked for real.

Each converted layer is decoded by this project's own decoder (``python -m
stream_processor``), checked with ``fsck.erofs``, extracted with ``fsck.erofs
--extract`` and compared with what the source layer means for overlayfs.
Where the kernel allows, each layer is also mounted (exact metadata: setuid
bits, xattrs, hard links) and the whole stack is mounted as an overlay and
compared with the image's merged tree built by hand (``merge_layers``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from stream_processor import mediatypes
from tests.builders import (
    huge_tar_header,
    manifests,
    mounted,
    rich_tree,
    special_entry,
    tar_bytes,
    without_origin,
)
from tests.conftest import require_tool, tar_mode_mkfs
from tests.oci_builder import (
    Image,
    archive_layout,
    build_layout,
    expected_layer,
    merge_layers,
    snapshot,
    tar_tree,
)
from tests.processor import run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="converting keeps owners: needs root")

EROFS_ZSTD = mediatypes.EROFS_LAYER_ZSTD


# ---------------------------------------------------------------- the image


def layer_trees(base: Path) -> list[Path]:
    """Three layers: a rich base, deletions + an opaque dir, then changes on top."""
    l1 = rich_tree(base / "l1")
    (l1 / "opt" / "app").mkdir(parents=True)
    for name in ("old1", "old2"):
        (l1 / "opt" / "app" / name).write_text(name)
    (l1 / "etc" / "remove-me").write_text("bye\n")
    l2 = base / "l2"
    (l2 / "etc").mkdir(parents=True)
    (l2 / "etc" / ".wh.remove-me").write_bytes(b"")
    (l2 / "opt" / "app").mkdir(parents=True)
    (l2 / "opt" / "app" / ".wh..wh..opq").write_bytes(b"")
    (l2 / "opt" / "app" / "fresh").write_text("fresh\n")
    (l2 / "usr" / "bin").mkdir(parents=True)
    (l2 / "usr" / "bin" / "tool").write_text("replaced\n")
    os.chmod(l2 / "usr" / "bin" / "tool", 0o755)
    l3 = base / "l3"
    (l3 / "data").mkdir(parents=True)
    big = l3 / "data" / "big.bin"
    big.write_bytes(hashlib.sha256(b"seed").digest() * 40_000)  # ~1.3 MB, spans chunks
    os.link(big, l3 / "data" / "big-again.bin")
    (l3 / "data" / "link").symlink_to("../usr/bin/tool")
    for tree in (l2, l3):
        for path in sorted(tree.rglob("*"), reverse=True):
            os.utime(path, (1_650_000_000, 1_650_000_000), follow_symlinks=False)
    return [l1, l2, l3]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return layer_trees(tmp_path_factory.mktemp("trees"))


@pytest.fixture(scope="module")
def tars(trees: list[Path]) -> list[bytes]:
    return [tar_tree(t) for t in trees]


@pytest.fixture(scope="module")
def source(tars: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout(tmp_path_factory.mktemp("src") / "layout", [Image(tars, "gzip")])


def convert(src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    proc = run_cli(["convert", str(src), str(dst), *extra], timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.fixture(scope="module", params=["dir", "tar"])
def builder(request: pytest.FixtureRequest) -> list[str]:
    """Both ways of building a tar layer: unpack + mkfs.erofs 1.5, or mkfs.erofs --tar=f."""
    if request.param == "tar":
        return ["--builder", "tar", "--mkfs", tar_mode_mkfs()]
    return ["--builder", "dir", "--mkfs", "mkfs.erofs"]


@pytest.fixture(scope="module")
def converted(
    source: Path, builder: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    dst = tmp_path_factory.mktemp("dst") / "out"
    proc = convert(source, dst, "--json", *builder)
    return dst, json.loads(proc.stdout)


def decode_layer(layout: Path, desc: dict[str, Any], out: Path) -> Path:
    """Decode with this project's decoder, as containerd would run it."""
    blob = (layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()
    proc = run_cli(["--media-type", desc["mediaType"]], stdin=blob)
    assert proc.returncode == 0, proc.stderr.decode()
    out.write_bytes(proc.stdout)
    return out


def fsck_extract(image: Path, dest: Path) -> Path:
    require_tool("fsck.erofs")
    check = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.run(
        ["fsck.erofs", f"--extract={dest}", str(image)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def loose(snap: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """What fsck.erofs 1.5 --extract can reproduce: no xattrs, no hard links, and it
    chowns after chmod, which clears setuid/setgid on files. Mounting checks those."""
    out = {}
    for rel, (mode, uid, gid, mtime, content, _xattrs, _link) in snap.items():
        keep = 0o7777 if stat.S_ISDIR(mode) else 0o1777
        out[rel] = (stat.S_IFMT(mode) | (mode & keep), uid, gid, mtime, content)
    return out


# ---------------------------------------------------------------- tests


def test_every_layer_decodes_checks_and_matches_its_source(
    converted: tuple[Path, Any], trees: list[Path], tmp_path: Path
) -> None:
    dst, report = converted
    [(entry, manifest, config)] = manifests(dst)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [EROFS_ZSTD] * 3
    for i, desc in enumerate(manifest["layers"]):
        raw = decode_layer(dst, desc, tmp_path / f"l{i}.erofs")
        assert (
            "sha256:" + hashlib.sha256(raw.read_bytes()).hexdigest()
            == (config["rootfs"]["diff_ids"][i])
        )
        got = fsck_extract(raw, tmp_path / f"x{i}")
        want = expected_layer(trees[i], tmp_path / f"want{i}")
        assert loose(snapshot(got)) == loose(snapshot(want))
    # the default shape requires no OS feature: CRI's platform matcher selects it
    assert "os.features" not in entry["platform"] and "os.features" not in config
    assert report["shape"] == "plain" and report["os_features"] == []
    assert len(report["layers"]) == 3


def test_layers_mount_with_exact_metadata(
    converted: tuple[Path, Any], trees: list[Path], tmp_path: Path
) -> None:
    dst, _ = converted
    [(_, manifest, _)] = manifests(dst)
    for i, desc in enumerate(manifest["layers"]):
        raw = decode_layer(dst, desc, tmp_path / f"l{i}.erofs")
        want = snapshot(expected_layer(trees[i], tmp_path / f"want{i}"))
        with mounted(raw, tmp_path / f"m{i}") as mnt:
            assert without_origin(snapshot(mnt)) == want
    with mounted(tmp_path / "l0.erofs", tmp_path / "m0") as mnt:
        assert stat.S_IMODE(os.lstat(mnt / "usr" / "bin" / "tool").st_mode) == 0o4755
        assert os.getxattr(mnt / "etc" / "owned", "user.comment") == b"hello \xff binary"


def test_overlay_stack_equals_the_images_merged_tree(
    converted: tuple[Path, Any], trees: list[Path], tmp_path: Path
) -> None:
    dst, _ = converted
    [(_, manifest, _)] = manifests(dst)
    with contextlib.ExitStack() as stack:
        lowers = []
        for i, desc in enumerate(manifest["layers"]):
            raw = decode_layer(dst, desc, tmp_path / f"l{i}.erofs")
            lowers.append(stack.enter_context(mounted(raw, tmp_path / f"m{i}")))
        merged = tmp_path / "merged"
        merged.mkdir()
        lowerdir = ":".join(str(p) for p in reversed(lowers))  # topmost first
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(merged)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount overlayfs here ({proc.stderr.strip()})")
        stack.callback(subprocess.run, ["umount", str(merged)], check=False)
        want = merge_layers(trees, tmp_path / "reference")
        assert snapshot(merged, strict=False) == snapshot(want, strict=False)
        assert not (merged / "etc" / "remove-me").exists()
        assert sorted(p.name for p in (merged / "opt" / "app").iterdir()) == ["fresh"]
        assert (merged / "usr" / "bin" / "tool").read_text() == "replaced\n"


def test_converting_twice_gives_identical_digests(
    converted: tuple[Path, Any], builder: list[str], source: Path, tmp_path: Path
) -> None:
    first, _ = converted
    second = tmp_path / "again"
    convert(source, second, "--jobs", "1", *builder)
    assert (first / "index.json").read_bytes() == (second / "index.json").read_bytes()
    assert sorted(os.listdir(first / "blobs" / "sha256")) == sorted(
        os.listdir(second / "blobs" / "sha256")
    )


def test_config_manifest_and_index_are_rewritten(
    converted: tuple[Path, Any], source: Path, tars: list[bytes]
) -> None:
    dst, report = converted
    [(entry, manifest, config)] = manifests(dst)
    [(_, _, old_config)] = manifests(source)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert config["config"] == old_config["config"] and config["history"] == old_config["history"]
    for layer, row, tar in zip(manifest["layers"], report["layers"], tars, strict=True):
        blob = dst / "blobs" / "sha256" / layer["digest"].split(":")[1]
        assert layer["size"] == blob.stat().st_size == row["wrapped_size"]
        assert layer["digest"] == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
        assert "dev.containerd.erofs.zstd.chunk_table_offset" in layer["annotations"]
        assert row["tar_size"] == len(tar) and row["erofs_size"] > 0 and row["seconds"] >= 0
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "test:latest"}
    assert json.loads((dst / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions(source: Path, tmp_path: Path, compression: str) -> None:
    dst = tmp_path / "out"
    convert(source, dst, "--compression", compression)
    [(_, manifest, config)] = manifests(dst)
    suffix = "" if compression == "none" else "+gzip"
    for i, desc in enumerate(manifest["layers"]):
        assert desc["mediaType"] == mediatypes.EROFS_LAYER + suffix
        assert "annotations" not in desc
        raw = decode_layer(dst, desc, tmp_path / f"{i}.erofs")
        assert (
            "sha256:" + hashlib.sha256(raw.read_bytes()).hexdigest()
            == (config["rootfs"]["diff_ids"][i])
        )


def test_archive_in_archive_out(
    source: Path, converted: tuple[Path, Any], builder: list[str], tmp_path: Path
) -> None:
    archive = archive_layout(source, tmp_path / "src.tar")
    out = tmp_path / "out.tar"
    convert(archive, out, "--archive", *builder)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(unpacked)], check=True)
    first, _ = converted
    assert (unpacked / "index.json").read_bytes() == (first / "index.json").read_bytes()
    again = tmp_path / "again.tar"
    convert(archive, again, "--archive", *builder)
    assert out.read_bytes() == again.read_bytes()


def test_multi_platform_all_or_picked(tars: list[bytes], tmp_path: Path) -> None:
    src = build_layout(
        tmp_path / "multi",
        [
            Image(tars[:2], "zstd", architecture="amd64"),
            Image(tars[1:], "none", architecture="arm64", variant="v8"),
            Image(tars[:1], "gzip", docker=True, architecture="ppc64le"),
        ],
    )
    convert(src, tmp_path / "all")
    found = manifests(tmp_path / "all")
    assert [e["platform"]["architecture"] for e, _, _ in found] == ["amd64", "arm64", "ppc64le"]
    assert all(m["layers"][0]["mediaType"] == EROFS_ZSTD for _, m, _ in found)
    assert not any("os.features" in e["platform"] or "os.features" in c for e, _, c in found)
    # the layer shared by two platforms is converted once and gives one blob
    assert found[0][1]["layers"][1]["digest"] == found[1][1]["layers"][0]["digest"]
    convert(src, tmp_path / "picked", "--platform", "linux/arm64/v8", "--platform", "linux/ppc64le")
    picked = manifests(tmp_path / "picked")
    assert [e["platform"]["architecture"] for e, _, _ in picked] == ["arm64", "ppc64le"]
    proc = run_cli(["convert", str(src), str(tmp_path / "none"), "--platform", "linux/s390x"])
    assert proc.returncode == 2
    assert b"no image manifest to convert for platform linux/s390x" in proc.stderr
    assert b"linux/amd64" in proc.stderr and not (tmp_path / "none").exists()


def test_erofs_layers_are_rewrapped_not_rebuilt(
    converted: tuple[Path, Any], tars: list[bytes], tmp_path: Path
) -> None:
    first, _ = converted
    [(_, manifest, config)] = manifests(first)
    raws = [
        decode_layer(first, d, tmp_path / f"{i}.erofs") for i, d in enumerate(manifest["layers"])
    ]
    import gzip

    blobs = [
        (mediatypes.EROFS_LAYER, raws[0].read_bytes()),
        (mediatypes.EROFS_LAYER_GZIP, gzip.compress(raws[1].read_bytes())),
    ]
    src = build_layout(tmp_path / "erofs-src", [Image(tars[:2], layer_blobs=blobs)])
    # the source config's diff_ids are the tar digests; EROFS layers keep their own
    out = tmp_path / "rewrapped"
    proc = convert(src, out, "--json")
    report = json.loads(proc.stdout)
    assert [row["kind"] for row in report["layers"]] == ["rewrapped", "rewrapped"]
    [(_, new_manifest, new_config)] = manifests(out)
    assert new_config["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"][:2]
    assert [d["digest"] for d in new_manifest["layers"]] == [
        d["digest"] for d in manifest["layers"][:2]
    ]


def test_json_report_and_summary_line(converted: tuple[Path, Any], builder: list[str]) -> None:
    _, report = converted
    assert set(report["layers"][0]) >= {"tar_size", "erofs_size", "wrapped_size", "seconds"}
    assert report["compression"] == "zstd" and report["chunk_size"] == 4 << 20
    assert report["builder"] == builder[1]
    assert all(layer["builder"] == builder[1] for layer in report["layers"])
    version = "1.5" if builder[1] == "dir" else "1."
    assert report["mkfs"].endswith(")") and f"(erofs-utils {version}" in report["mkfs"]


def test_summary_line_when_not_a_terminal(source: Path, tmp_path: Path) -> None:
    proc = convert(source, tmp_path / "out")
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("erofs-stream-processor") is False
    assert "converted 3 layer(s) in 1 manifest(s)" in lines[0] and proc.stdout == b""


def test_progress_lines_on_a_terminal(source: Path, tmp_path: Path) -> None:
    """stderr on a pty: one line per finished layer, then the summary."""
    import pty
    import sys

    from tests.conftest import ROOT

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_processor", "convert", str(source), str(tmp_path / "o")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(120) == 0
    text = b"".join(chunks).decode().replace("\r\x1b[K", "\n")
    layer_lines = [line for line in text.splitlines() if line.startswith("layer ")]
    assert len(layer_lines) == 3, text
    assert all(" read " in line and " erofs " in line and " zstd " in line for line in layer_lines)
    assert "converted 3 layer(s)" in text.splitlines()[-1]


# ---------------------------------------------------------------- bad input


def _one_line_error(proc: subprocess.CompletedProcess[bytes], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr.decode()
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert text in lines[0], lines[0]
    assert proc.stdout == b""


HOSTILE_LAYERS: dict[str, tuple[bytes, str]] = {
    "path traversal": (
        tar_bytes([("../../escape", b"x")]),
        "'../../escape' climbs out of the layer",
    ),
    "absolute path": (tar_bytes([("/etc/evil", b"x")]), "'/etc/evil' is an absolute path"),
    "symlink escape": (
        tar_bytes([special_entry("link", tarfile.SYMTYPE, "/tmp"), ("link/evil", b"x")]),
        "'link/evil' would be written through the symlink 'link'",
    ),
    "huge declared size": (
        huge_tar_header("big", 1 << 40),
        "'big' declares 1099511627776 bytes, more than the layer limit",
    ),
    "duplicate entry": (tar_bytes([("a", b"1"), ("a", b"2")]), "'a' appears twice in the layer"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_hostile_layer_fails_cleanly(builder: list[str], tmp_path: Path, case: str) -> None:
    """Each class the issue names, with either builder: exit 65, one line naming the entry,
    nothing on stdout, no DST, nothing written outside the work dir (which is gone too)."""
    layer, message = HOSTILE_LAYERS[case]
    src = build_layout(tmp_path / "src", [Image([layer], "gzip")])
    proc = run_cli(["convert", str(src), str(tmp_path / "dst"), *builder])
    _one_line_error(proc, 65, message)
    assert not (tmp_path / "dst").exists() and not (tmp_path / "escape").exists()
    assert not Path("/tmp/evil").exists() and not Path("/etc/evil").exists()
    assert sorted(os.listdir(tmp_path)) == ["src"]  # the staging area is gone too


def test_a_failing_layer_stops_the_other_workers(tmp_path: Path) -> None:
    import io
    import tarfile

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(40):  # ~80 MB: the sound layer is still being converted
        (tree / f"f{i}").write_bytes(os.urandom(2 << 20))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("/abs"), io.BytesIO(b""))
    src = build_layout(tmp_path / "src", [Image([tar_tree(tree), buf.getvalue()], "none")])
    shutil.rmtree(tree)
    proc = run_cli(["convert", str(src), str(tmp_path / "dst"), "--jobs", "2"])
    _one_line_error(proc, 65, "'/abs' is an absolute path")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_corrupt_blob_is_named(source: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    [(_, manifest, _)] = manifests(src)
    blob = src / "blobs" / "sha256" / manifest["layers"][1]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-12] ^= 0xFF  # inside the gzip trailer: decompresses, but the digest is wrong
    blob.write_bytes(bytes(data))
    proc = run_cli(["convert", str(src), str(tmp_path / "dst")])
    _one_line_error(proc, 65, manifest["layers"][1]["digest"])
    assert not (tmp_path / "dst").exists()


def test_diff_id_mismatch_is_refused(tars: list[bytes], tmp_path: Path) -> None:
    blobs = [(mediatypes.OCI_LAYER_TAR, tars[1])]
    src = build_layout(tmp_path / "src", [Image(tars[:1], layer_blobs=blobs)])
    proc = run_cli(["convert", str(src), str(tmp_path / "dst")])
    _one_line_error(proc, 65, "but the image config lists diff_id")


@pytest.mark.parametrize(
    ("setup", "code", "text"),
    [
        ("missing", 2, "no such OCI layout directory or archive"),
        ("no-index", 65, "it has no index.json"),
        ("bad-json", 65, "index.json is not valid JSON"),
        ("dst-exists", 2, "already exists and is not an empty directory"),
        ("unknown-layer", 2, "cannot convert a layer of media type"),
    ],
)
def test_bad_sources(tmp_path: Path, tars: list[bytes], setup: str, code: int, text: str) -> None:
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    if setup != "missing":
        blobs = [("application/vnd.in-toto+json", b"{}")] if setup == "unknown-layer" else None
        build_layout(src, [Image(tars[:1], "gzip", layer_blobs=blobs)])
    if setup == "no-index":
        (src / "index.json").unlink()
    if setup == "bad-json":
        (src / "index.json").write_text("{nope")
    if setup == "dst-exists":
        dst.mkdir()
        (dst / "something").write_text("keep me")
    _one_line_error(run_cli(["convert", str(src), str(dst)]), code, text)
    if setup == "dst-exists":
        assert (dst / "something").read_text() == "keep me"


def test_nested_index_as_skopeo_writes_it(tars: list[bytes], tmp_path: Path) -> None:
    """index.json -> image index blob -> manifests (``skopeo copy --all ... oci:``)."""
    from tests.oci_builder import OCI_INDEX, LayoutBuilder

    builder = LayoutBuilder(tmp_path / "src")
    inner = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            builder.image(Image(tars[:1], "gzip", architecture="amd64")),
            builder.image(Image(tars[:1], "zstd", architecture="arm64")),
        ],
    }
    src = builder.finish([builder.json_blob(inner, OCI_INDEX)])
    out = tmp_path / "out"
    proc = convert(src, out, "--json", "--platform", "linux/arm64")
    top = json.loads((out / "index.json").read_text())
    assert top["manifests"][0]["mediaType"] == OCI_INDEX
    assert top["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "test:latest"
    }
    found = manifests(out)
    assert [e["platform"]["architecture"] for e, _, _ in found] == ["arm64"]
    assert [row["platform"] for row in json.loads(proc.stdout)["manifests"]] == ["linux/arm64"]


def test_os_feature_marks_index_entry_and_config_like_containerd(
    tars: list[bytes], tmp_path: Path
) -> None:
    """``--os-feature erofs`` is what ``ctr images convert --erofs`` writes; a stale one goes."""
    src = build_layout(tmp_path / "src", [Image(tars[:2], "gzip", architecture="amd64")])
    proc = convert(src, tmp_path / "marked", "--os-feature", "erofs", "--json")
    [(entry, _, config)] = manifests(tmp_path / "marked")
    assert entry["platform"] == {"architecture": "amd64", "os": "linux", "os.features": ["erofs"]}
    assert config["os.features"] == ["erofs"]
    report = json.loads(proc.stdout)
    assert (report["shape"], report["os_features"]) == ("os-feature", ["erofs"])
    assert [(r["kind"], r["os_features"]) for r in report["manifests"]] == [("erofs", ["erofs"])]
    assert b"os-feature (erofs) index" in proc.stderr
    # re-converting a marked image without the option drops the requirement again
    convert(tmp_path / "marked", tmp_path / "plain")
    [(entry, _, config)] = manifests(tmp_path / "plain")
    assert "os.features" not in entry["platform"] and "os.features" not in config


def test_keep_source_publishes_tar_and_erofs_manifests(tars: list[bytes], tmp_path: Path) -> None:
    """A mixed-fleet index: each source manifest, unchanged, next to its marked EROFS one."""
    src = build_layout(
        tmp_path / "src",
        [
            Image(tars[:2], "gzip", architecture="amd64"),
            Image(tars[1:], "zstd", architecture="arm64", variant="v8"),
        ],
    )
    source = manifests(src)
    out = tmp_path / "mixed"
    proc = convert(src, out, "--keep-source", "--json")
    found = manifests(out)
    assert [e["digest"] for e, _, _ in found[0::2]] == [e["digest"] for e, _, _ in source]
    for (entry, manifest, config), (src_entry, src_manifest, src_config) in zip(
        found[0::2], source, strict=True
    ):
        assert (manifest, config) == (src_manifest, src_config)  # the blobs are copied as is
        assert entry["platform"] == src_entry["platform"]
        for layer in manifest["layers"]:
            blob = out / "blobs" / "sha256" / layer["digest"].split(":")[1]
            assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"]
    for entry, manifest, config in found[1::2]:
        assert entry["platform"]["os.features"] == ["erofs"] == config["os.features"]
        assert {layer["mediaType"] for layer in manifest["layers"]} == {EROFS_ZSTD}
    report = json.loads(proc.stdout)
    assert (report["shape"], report["os_features"]) == ("mixed", ["erofs"])
    assert [(r["kind"], r["platform"]) for r in report["manifests"]] == [
        ("source", "linux/amd64"),
        ("erofs", "linux/amd64"),
        ("source", "linux/arm64/v8"),
        ("erofs", "linux/arm64/v8"),
    ]
    assert b"in 2 manifest(s), mixed (erofs) index" in proc.stderr


def test_unknown_os_feature_is_a_usage_error(tars: list[bytes], tmp_path: Path) -> None:
    src = build_layout(tmp_path / "src", [Image(tars[:1], "gzip")])
    proc = run_cli(["convert", str(src), str(tmp_path / "out"), "--os-feature", "erofs2"])
    assert proc.returncode == 2 and proc.stdout == b""
    last = proc.stderr.decode().splitlines()[-1]
    assert "argument --os-feature: invalid choice: 'erofs2'" in last, last
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging directory left
