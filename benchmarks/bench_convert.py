"""Benchmark ``convert``: a multi-layer tar+gzip image of >= 200 MB into EROFS layers.

The source image is real: four tar+gzip layers of parts of ``/usr/share``
(``BENCH_TREE`` overrides the root), written with GNU tar and pigz into an
OCI layout cached under ``benchmarks/work/convert-src``.

Figures: wall time of ``convert`` (erofs+zstd seekable, and erofs+gzip), of
the same steps done by hand in a shell, per layer (``tar -x`` + ``mkfs.erofs``
+ ``zstd -T0``), and the total sizes. Target: convert <= 1.3 x the shell.
Both builders are measured: ``dir`` (unpack, then Debian 12's mkfs.erofs 1.5)
on disk and on tmpfs, and ``tar`` (the tar streamed into erofs-utils 1.8's
``mkfs.erofs --tar=f``, from ``.ci/fetch-erofs-utils``) against its own shell
equivalent (``unpigz -dc | mkfs.erofs --tar=f`` + ``zstd -T0``).

Run: ``python benchmarks/bench_convert.py`` (about 1-2 minutes on 2 cores).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
SRC = WORK / "convert-src"
MIN_TOTAL = 200 * 10**6
TARGET_RATIO = 1.3
LAYERS = 4


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def pick_layers(tree: Path) -> list[list[Path]]:
    """Top-level directories of ``tree``, largest first, dealt into LAYERS groups >= 200 MB."""
    sizes = sorted(((du(p), p) for p in tree.iterdir() if p.is_dir()), reverse=True)
    groups: list[list[Path]] = [[] for _ in range(LAYERS)]
    totals = [0] * LAYERS
    for size, path in sizes:
        if size > MIN_TOTAL // 2:
            continue  # keep layers of comparable size
        if sum(totals) >= MIN_TOTAL * 1.3 and all(totals):
            break
        i = totals.index(min(totals))
        groups[i].append(path)
        totals[i] += size
    if sum(totals) < MIN_TOTAL:
        sys.exit(f"{tree} holds only {sum(totals)} bytes; set BENCH_TREE to a larger tree")
    return [g for g in groups if g]


def blob(layout: Path, data_path: Path) -> dict[str, object]:
    h = hashlib.sha256()
    with data_path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    target = layout / "blobs" / "sha256" / h.hexdigest()
    shutil.move(data_path, target)
    return {"digest": digest, "size": target.stat().st_size}


def json_blob(layout: Path, doc: dict[str, object], media_type: str) -> dict[str, object]:
    tmp = layout / "tmp.json"
    tmp.write_bytes(json.dumps(doc).encode())
    return {"mediaType": media_type, **blob(layout, tmp)}


def source_image() -> Path:
    """The cached tar+gzip source layout (built once with GNU tar + pigz)."""
    if (SRC / "index.json").exists():
        return SRC
    tree = Path(os.environ.get("BENCH_TREE", "/usr/share"))
    tmp = WORK / "convert-src.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    layers, diff_ids = [], []
    for i, group in enumerate(pick_layers(tree)):
        tar_path = tmp / f"layer{i}.tar"
        rel = [str(p.relative_to("/")) for p in group]
        subprocess.run(
            ["tar", "--numeric-owner", "--sort=name", "-C", "/", "-cf", str(tar_path), *rel],
            check=True,
        )
        diff_ids.append(blob(tmp, tar_path)["digest"])
        tar_blob = tmp / "blobs" / "sha256" / str(diff_ids[-1]).split(":")[1]
        gz = tmp / f"layer{i}.tar.gz"
        with tar_blob.open("rb") as src, gz.open("wb") as dst:
            subprocess.run(["pigz", "-6", "-n"], stdin=src, stdout=dst, check=True)
        tar_blob.unlink()
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(tmp, gz)})
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    cfg = json_blob(tmp, config, "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": layers,
    }
    man = json_blob(tmp, manifest, "application/vnd.oci.image.manifest.v1+json")
    man["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    index["manifests"] = [man]
    (tmp / "index.json").write_text(json.dumps(index))
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    tmp.rename(SRC)
    return SRC


def layer_blobs(layout: Path) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    man_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / man_digest).read_text())
    return [layout / "blobs" / "sha256" / d["digest"].split(":")[1] for d in manifest["layers"]]


def run_convert(src: Path, work: Path, *extra: str) -> tuple[float, dict[str, object]]:
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        dst = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "stream_processor", "convert", str(src), str(dst), "--json"]
        cmd += ["--work-dir", str(work)]
        subprocess.run(["sync"], check=False)
        started = time.monotonic()
        proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, cwd=ROOT)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(f"convert failed: {proc.stderr.strip()}")
        return seconds, json.loads(proc.stdout)


SHELL = """
set -e
out=$(mktemp -d -p "$OUT")
for blob in "$@"; do
  d=$(mktemp -d -p "$WORK")
  mkdir "$d/root"
  tar -xzf "$blob" -C "$d/root"
  mkfs.erofs --quiet -Eforce-inode-extended "$d/layer.erofs" "$d/root"
  zstd -q -T0 "$d/layer.erofs" -o "$out/$(basename "$blob").erofs.zst"
  rm -rf "$d"
done
rm -rf "$out"
"""


SHELL_TAR = """
set -e
out=$(mktemp -d -p "$OUT")
for blob in "$@"; do
  d=$(mktemp -d -p "$WORK")
  unpigz -dc "$blob" | "$MKFS" --tar=f --aufs --quiet -Enoinline_data --sort=none \\
      -T0 --mkfs-time "$d/layer.erofs"
  zstd -q -T0 "$d/layer.erofs" -o "$out/$(basename "$blob").erofs.zst"
  rm -rf "$d"
done
rm -rf "$out"
"""
TAR_MKFS = ROOT / ".tools" / "erofs-utils" / "bin" / "mkfs.erofs"


def run_shell(blobs: list[Path], work: Path, script: str = SHELL) -> float:
    """The same steps by hand: unpack, build, compress; output next to convert's DST."""
    subprocess.run(["sync"], check=False)
    started = time.monotonic()
    subprocess.run(
        ["bash", "-c", script, "shell", *map(str, blobs)],
        check=True,
        env={**os.environ, "WORK": str(work), "OUT": str(WORK), "MKFS": str(TAR_MKFS)},
    )
    return time.monotonic() - started


def work_dirs() -> list[tuple[str, Path]]:
    """Unpacking is metadata-heavy: measure on disk and, where there is one, on tmpfs."""
    dirs = [("disk", WORK)]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        dirs.append(("tmpfs", shm))
    return dirs


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    src = source_image()
    blobs = layer_blobs(src)
    tar_gz = sum(p.stat().st_size for p in blobs)
    rows: list[tuple[str, float, float]] = []
    dirs = work_dirs()
    for label, base in dirs:
        work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=base))
        try:
            shell = run_shell(blobs, work)
            zstd_s, zstd_report = run_convert(src, work, "--builder", "dir", "--mkfs", "mkfs.erofs")
            rows.append((f"dir builder, {label}", shell, zstd_s))
            if label == dirs[-1][0]:  # gzip once, on the fastest work dir
                gzip_s, gzip_report = run_convert(
                    src, work, "--compression", "gzip", "--builder", "dir", "--mkfs", "mkfs.erofs"
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    tar_erofs = tar_zstd = None
    gzip_where = rows[-1][0]
    if TAR_MKFS.exists():
        work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=WORK))
        try:
            shell = run_shell(blobs, work, SHELL_TAR)
            tar_s, tar_report = run_convert(src, work, "--builder", "tar", "--mkfs", str(TAR_MKFS))
            rows.append(("tar builder (erofs-utils 1.8), disk", shell, tar_s))
            tar_layers = tar_report["layers"]
            assert isinstance(tar_layers, list)
            tar_erofs = sum(int(row["erofs_size"]) for row in tar_layers)
            tar_zstd = sum(int(row["wrapped_size"]) for row in tar_layers)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"({TAR_MKFS} missing: run .ci/fetch-erofs-utils; tar builder not measured)\n")
    layers = zstd_report["layers"]
    assert isinstance(layers, list)
    tar_total = sum(int(row["tar_size"]) for row in layers)
    erofs_total = sum(int(row["erofs_size"]) for row in layers)
    zstd_total = sum(int(row["wrapped_size"]) for row in layers)
    glayers = gzip_report["layers"]
    assert isinstance(glayers, list)
    gzip_total = sum(int(row["wrapped_size"]) for row in glayers)
    print(f"### convert: {len(blobs)} tar+gzip layers, {mib(tar_total)} of tar, 2 cores\n")
    print("| sizes | bytes |")
    print("|---|---|")
    print(f"| source: tar+gzip layers (pigz -6) | {mib(tar_gz)} |")
    print(f"| uncompressed tar | {mib(tar_total)} |")
    print(f"| raw EROFS images (dir builder, mkfs.erofs 1.5) | {mib(erofs_total)} |")
    if tar_erofs is not None:
        print(f"| raw EROFS images (tar builder, -Enoinline_data) | {mib(tar_erofs)} |")
    print(f"| erofs+zstd, seekable (4 MiB chunks; dir builder) | {mib(zstd_total)} |")
    if tar_zstd is not None:
        print(f"| erofs+zstd, seekable (4 MiB chunks; tar builder) | {mib(tar_zstd)} |")
    print(f"| erofs+gzip (dir builder) | {mib(gzip_total)} |")
    print()
    print("| builder, work dir | the same steps in a shell | convert (zstd) | ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for label, shell, zstd_s in rows:
        ratio = zstd_s / shell
        worst = max(worst, ratio)
        print(f"| {label} | {shell:.2f} s | {zstd_s:.2f} s | {ratio:.2f} |")
    print(f"\nconvert --compression gzip ({gzip_where}): {gzip_s:.2f} s")
    verdict = "meets" if worst <= TARGET_RATIO else "MISSES"
    print(f"\nworst convert / shell = {worst:.2f} ({verdict} the <= {TARGET_RATIO} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
