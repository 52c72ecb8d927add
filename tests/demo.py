"""`make demo`: the main job on a built-in sample, end to end, with a short report.

Builds a sample directory tree, makes a real EROFS image with mkfs.erofs,
wraps it as +zstd (stock `zstd`) and +gzip (stock `gzip`), feeds each to the
processor exactly as containerd does (media type in the environment, stdin
pipe, 32 KiB reads through SHA-256), checks the output byte for byte and
with fsck.erofs, and shows that a damaged layer is refused.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ZSTD = "application/vnd.erofs.layer.v1+zstd"
GZIP = "application/vnd.erofs.layer.v1+gzip"


def sample_tree(root: Path) -> None:
    """A small tree with the kinds of entries a container layer has."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('NAME="erofs-stream-processor demo"\n')
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / "hello"
    tool.write_text("#!/bin/sh\necho hello from an EROFS layer\n")
    tool.chmod(0o755)
    docs = root / "usr" / "share" / "doc"
    docs.mkdir(parents=True)
    for i in range(64):
        (docs / f"page{i:02}.txt").write_text(f"page {i}\n" + "lorem ipsum dolor sit amet\n" * 200)
    (root / "usr" / "lib").mkdir()
    (root / "usr" / "lib" / "blob.bin").write_bytes(random.Random(7).randbytes(1 << 20))
    (root / "bin").symlink_to("usr/bin")


def run_like_containerd(blob: Path, media_type: str) -> tuple[int, str, int, str, float]:
    """Start the processor as containerd's binary processor does; hash what it writes."""
    env = dict(os.environ, STREAM_PROCESSOR_MEDIATYPE=media_type)
    started = time.perf_counter()
    with blob.open("rb") as src:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_processor"],
            stdin=src,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        digest = hashlib.sha256()
        size = 0
        while chunk := proc.stdout.read(32 * 1024):
            digest.update(chunk)
            size += len(chunk)
        err = proc.stderr.read().decode().strip()
        code = proc.wait()
    return code, digest.hexdigest(), size, err, time.perf_counter() - started


def _row(name: str, blob: Path, size: int, secs: float, verdict: str) -> None:
    print(f"{name:42} {blob.stat().st_size:>8} {size:>8} {secs * 1000:>5.0f}ms  {verdict}")


def main() -> int:
    for tool in ("mkfs.erofs", "fsck.erofs", "zstd", "gzip"):
        if shutil.which(tool) is None:
            print(f"demo: {tool} is missing; run `make install`", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="erofs-sp-demo-") as tmp:
        work = Path(tmp)
        tree = work / "rootfs"
        sample_tree(tree)
        image = work / "layer.erofs"
        subprocess.run(
            ["mkfs.erofs", "--quiet", "-T0", str(image), str(tree)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        want = hashlib.sha256(image.read_bytes()).hexdigest()
        blobs = {
            ZSTD: work / "layer.erofs.zst",
            GZIP: work / "layer.erofs.gz",
        }
        subprocess.run(["zstd", "-q", "-19", str(image), "-o", str(blobs[ZSTD])], check=True)
        with blobs[GZIP].open("wb") as out:
            subprocess.run(["gzip", "-9", "-c", str(image)], stdout=out, check=True)
        broken = work / "broken.erofs.zst"
        data = bytearray(blobs[ZSTD].read_bytes())
        broken.write_bytes(bytes(data[: len(data) * 2 // 3]))

        print(f"sample EROFS image: {image.stat().st_size} bytes, sha256 {want[:16]}...")
        print(f"{'media type':42} {'blob':>8} {'out':>8} {'time':>7}  result")
        ok = True
        for media_type, blob in blobs.items():
            code, digest, size, err, secs = run_like_containerd(blob, media_type)
            decoded = work / "decoded.erofs"
            with blob.open("rb") as src, decoded.open("wb") as dst:
                subprocess.run(
                    [sys.executable, "-m", "stream_processor", "--media-type", media_type],
                    stdin=src,
                    stdout=dst,
                    check=True,
                )
            fsck = subprocess.run(["fsck.erofs", str(decoded)], capture_output=True)
            good = code == 0 and digest == want and fsck.returncode == 0
            ok &= good
            verdict = "identical image, fsck.erofs clean" if good else f"FAILED ({code}: {err})"
            _row(media_type, blob, size, secs, verdict)
        code, digest, size, err, secs = run_like_containerd(broken, ZSTD)
        refused = code == 65 and size < image.stat().st_size
        ok &= refused
        verdict = f"{'refused' if refused else 'NOT REFUSED'}: exit {code}, {err!r}"
        _row("truncated +zstd layer", broken, size, secs, verdict)
    print("demo: all good" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
