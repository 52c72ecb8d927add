"""A real containerd unpacking a multi-layer image through the processor, against ``zstd -dc``.

Issue 12's last target: the whole pull of a 3-layer image (``/usr/share/locale``,
``doc`` and ``man`` as separate layers) through containerd with our processor
registered (as the generated config registers it) against the same daemon
set-up with ``zstd -dc`` registered as the processor; <= 1.00 x, medians,
the runs interleaved.

* containerd 2.3 (``EROFS_SP_CONTAINERD23_BIN``: its bin directory, e.g. a
  local build): the layers are seekable ``application/vnd.erofs.layer.v1+zstd``
  made by ``pack``; the erofs differ sends them down the ``tar+zstd`` route
  (docs/stream-processor-contract.md) and writes ``layer.erofs`` from stdout.
* without it, Debian's containerd 2.1 under ``.tools/`` (``.ci/fetch-containerd``)
  with ordinary ``tar+zstd`` layers: the same processor route, the erofs
  differ building ``layer.erofs`` with ``mkfs.erofs --tar`` (erofs-utils >= 1.8
  from ``.ci/fetch-erofs-utils``).
* neither: one line saying so, exit 0.

The image is pushed (``skopeo``) to a private ``docker-registry`` on the
loopback and each run is a ``ctr images pull --plain-http`` into a fresh
namespace, so every layer is unpacked again (the blobs themselves are fetched
once: containerd shares content between namespaces). Without
``docker-registry`` or ``skopeo`` it falls back to ``ctr images import``, which
runs the same transfer service, unpacker, differ and processor chain without a
registry, and says so in the table's title. Each daemon has a private root,
state directory and socket.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_containerd.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests: the registry harness

from common import ROOT, WORK, registered_processor, table

from stream_processor.containerd.render import MAX_CONCURRENT_UNPACKS
from tests.containerd_harness import Registry, start_registry

ENV_23 = "EROFS_SP_CONTAINERD23_BIN"
RUNS = 11  # a whole pull moves by more than the gap on a shared machine: more runs
TREES = ("/usr/share/locale", "/usr/share/doc", "/usr/share/man")
TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
EROFS_ZSTD = "application/vnd.erofs.layer.v1+zstd"
DISABLED = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
]
REF = "bench/usr-share:3-layers"


def q(text: str) -> str:
    return json.dumps(text)  # a TOML basic string for these plain paths


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _blob(blobs: Path, path: Path) -> tuple[str, int]:
    digest = _sha256_file(path)
    target = blobs / digest.split(":")[1]
    if not target.exists():
        shutil.copyfile(path, target)
    return digest, path.stat().st_size


def _json_blob(blobs: Path, doc: dict[str, object], media_type: str) -> dict[str, object]:
    data = json.dumps(doc, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def build_archive(kind: str, proc: list[str], env: dict[str, str]) -> tuple[Path, int]:
    """An OCI archive with one layer per tree: EROFS+zstd (``pack``) or tar+zstd.
    Returns the archive and the uncompressed bytes of its layers."""
    archive = WORK / f"containerd-{kind}.oci.tar"
    meta = archive.with_suffix(".json")
    if archive.exists() and meta.exists():
        return archive, int(json.loads(meta.read_text())["raw_bytes"])
    work = WORK / f"containerd-{kind}"
    shutil.rmtree(work, ignore_errors=True)
    blobs = work / "layout" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids, raw_bytes = [], [], 0
    for i, tree in enumerate(TREES):
        raw = work / f"layer{i}.raw"
        blob = work / f"layer{i}.zst"
        if kind == "erofs":
            subprocess.run(
                ["mkfs.erofs", "--quiet", "-T0", str(raw), tree],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cmd = [*proc, "pack", str(raw), "-o", str(blob)]
            subprocess.run(cmd, check=True, env=dict(os.environ, **env), stdout=subprocess.DEVNULL)
            media_type = EROFS_ZSTD
        else:
            tar = ["tar", "--sort=name", "--numeric-owner", "--mtime=@0", "-C", tree, "-cf"]
            subprocess.run([*tar, str(raw), "."], check=True)
            subprocess.run(["zstd", "-q", "-3", "-T0", "-f", str(raw), "-o", str(blob)], check=True)
            media_type = TAR_ZSTD
        diff_ids.append(_sha256_file(raw))
        raw_bytes += raw.stat().st_size
        digest, size = _blob(blobs, blob)
        layers.append({"mediaType": media_type, "digest": digest, "size": size})
        raw.unlink()
        blob.unlink()
    config = _json_blob(
        blobs,
        {
            "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        },
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = _json_blob(
        blobs,
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        },
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest["annotations"] = {"org.opencontainers.image.ref.name": REF}
    layout = work / "layout"
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [manifest]}, separators=(",", ":"))
    )
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as out:
        for entry in sorted(layout.rglob("*")):
            out.add(entry, arcname=str(entry.relative_to(layout)), recursive=False)
    tmp.rename(archive)
    meta.write_text(json.dumps({"raw_bytes": raw_bytes}))
    shutil.rmtree(work)
    return archive, raw_bytes


class Daemon:
    """A private containerd (root, state, socket under ``base``) with one processor entry."""

    def __init__(
        self,
        bin_dir: Path,
        name: str,
        path: str,
        args: list[str],
        env: list[str],
        unpacks: int = 1,
    ) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix=f"sp-bc-{name}-"))  # short: socket paths
        self.socket = self.base / "c.sock"
        arch = "amd64" if os.uname().machine == "x86_64" else "arm64"
        config = "\n".join(
            [
                "version = 3",
                f"root = {q(str(self.base / 'root'))}",
                f"state = {q(str(self.base / 'state'))}",
                "disabled_plugins = [" + ", ".join(q(p) for p in DISABLED) + "]",
                f"[grpc]\n  address = {q(str(self.socket))}",
                f"[ttrpc]\n  address = {q(str(self.socket) + '.ttrpc')}",
                '[stream_processors."io.containerd.processor.v1.bench"]',
                f"  accepts = [{q(TAR_ZSTD)}]",
                '  returns = "application/vnd.oci.image.layer.v1.tar"',
                f"  path = {q(path)}",
                "  args = [" + ", ".join(q(a) for a in args) + "]",
                "  env = [" + ", ".join(q(e) for e in env) + "]",
                '[plugins."io.containerd.service.v1.diff-service"]',
                '  default = ["erofs", "walking"]',
                '[plugins."io.containerd.transfer.v1.local"]',
                f"  max_concurrent_unpacks = {unpacks}",
                '  [[plugins."io.containerd.transfer.v1.local".unpack_config]]',
                f'    platform = "linux/{arch}"',
                '    snapshotter = "erofs"',
                '    differ = "erofs"',
                "",
            ]
        )
        (self.base / "config.toml").write_text(config)
        self.log = (self.base / "daemon.log").open("wb")
        env_path = os.environ.get("EROFS_SP_BENCH_MKFS_DIR", "")
        daemon_env = dict(os.environ, PATH=f"{env_path}:{bin_dir}:{os.environ['PATH']}")
        self.proc = subprocess.Popen(
            [str(bin_dir / "containerd"), "--config", str(self.base / "config.toml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=daemon_env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.socket.exists() and self.ctr("default", "version").returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise SystemExit(
            f"containerd did not start: {(self.base / 'daemon.log').read_text()[-800:]}"
        )

    def ctr(self, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "ctr"), "--address", str(self.socket), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    def unpack_seconds(self, source: str | Path, namespace: str) -> float:
        """One pull of ``source`` (a registry reference) or import of it (an archive)."""
        if isinstance(source, Path):
            how, ref = ["images", "import", "--snapshotter", "erofs", str(source)], REF
        else:
            how, ref = ["images", "pull", "--plain-http", "--snapshotter", "erofs", source], source
        started = time.perf_counter()
        done = self.ctr(namespace, *how)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            log = (self.base / "daemon.log").read_text()[-1500:]
            raise SystemExit(f"ctr {how[1]} failed: {done.stderr.strip()[-500:]}\n{log}")
        check = self.ctr(namespace, "images", "check", "--snapshotter", "erofs")
        if "complete" not in check.stdout or "true" not in check.stdout.split("\n", 1)[-1]:
            raise SystemExit(f"image not unpacked: {check.stdout.strip()}")
        self.ctr(namespace, "images", "rm", "--sync", ref)
        return elapsed

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", str(self.base / "state")], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _tar_mkfs() -> str | None:
    """The directory of a ``mkfs.erofs`` with ``--tar`` (erofs-utils >= 1.8), or None.

    Both differs need one: 2.1's builds ``layer.erofs`` from tar with it, and
    2.3's erofs differ refuses to load without ``--tar`` (>= 1.7: "mkfs.erofs does
    not support tar mode"), even for layers that are EROFS already (seen on 2.3.4);
    1.8 is what ``.ci/fetch-erofs-utils`` provides."""
    from stream_processor.convert.erofsbuild import find_mkfs

    candidates = (
        os.environ.get("EROFS_SP_TEST_TAR_MKFS"),
        str(ROOT / ".tools" / "erofs-utils" / "bin" / "mkfs.erofs"),
        "mkfs.erofs",
    )
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found and find_mkfs(found).streams_tar:
            return str(Path(found).parent)
    return None


def _pushed(archive: Path) -> tuple[str, Registry] | None:
    """The image in a private registry on the loopback (a reference to pull, and the
    registry to stop), or None without ``docker-registry`` or ``skopeo``."""
    registry_bin, skopeo = shutil.which("docker-registry"), shutil.which("skopeo")
    if registry_bin is None or skopeo is None:
        return None
    registry = start_registry(registry_bin, Path(tempfile.mkdtemp(prefix="sp-bc-registry-")))
    ref = f"{registry.host}/{REF}"
    copy = [skopeo, "copy", "--quiet", "--dest-tls-verify=false"]
    done = subprocess.run(
        [*copy, f"oci-archive:{archive}", f"docker://{ref}"], capture_output=True, text=True
    )
    if done.returncode != 0:
        registry.stop()
        raise SystemExit(f"skopeo copy to {ref} failed: {done.stderr.strip()}")
    return ref, registry


def _containerd() -> tuple[Path, str] | str:
    """(bin dir, layer kind), or why the benchmark cannot run."""
    mkfs_dir = _tar_mkfs()
    if mkfs_dir is None:
        return "the erofs differ needs erofs-utils >= 1.8 (.ci/fetch-erofs-utils)"
    os.environ["EROFS_SP_BENCH_MKFS_DIR"] = mkfs_dir
    env = os.environ.get(ENV_23)
    if env:
        bin_dir = Path(env)
        if not (bin_dir / "containerd").exists():
            return f"{ENV_23}={env} has no containerd"
        return bin_dir, "erofs"
    fetched = ROOT / ".tools" / "containerd" / "bin"
    if not (fetched / "containerd").exists():
        return f"no containerd 2.3 ({ENV_23} unset) and no containerd 2.1 under .tools/"
    return fetched, "tar"


def main() -> int:
    if os.geteuid() != 0:
        print("containerd benchmark skipped: containerd needs root")
        return 0
    found = _containerd()
    if isinstance(found, str):
        print(f"containerd benchmark skipped: {found}")
        return 0
    bin_dir, kind = found
    version = subprocess.run(
        [str(bin_dir / "containerd"), "--version"], capture_output=True, text=True
    ).stdout.split()[2]
    proc, reg_env = registered_processor()
    archive, raw_bytes = build_archive(kind, proc, reg_env)
    log_file = WORK / "containerd-bench-processor.log"
    # info: one record per layer proves each layer went through our processor (~1 ms each).
    logging = {"EROFS_SP_LOG_FILE": str(log_file), "EROFS_SP_LOG_LEVEL": "info"}
    ours_env = [f"{k}={v}" for k, v in {**reg_env, **logging}.items()]
    log_file.unlink(missing_ok=True)
    zstd_path = shutil.which("zstd")
    assert zstd_path is not None
    # containerd's default (layers one after another) and what ``config`` writes
    daemons = {
        (who, unpacks): Daemon(bin_dir, f"{who}{unpacks}", *cmd, unpacks=unpacks)
        for unpacks in sorted({1, MAX_CONCURRENT_UNPACKS})
        for who, cmd in (
            ("ours", (proc[0], proc[1:], ours_env)),
            ("zstd", (zstd_path, ["-dc"], [])),
        )
    }
    times: dict[tuple[str, int], list[float]] = {name: [] for name in daemons}
    pushed = None
    try:
        pushed = _pushed(archive)
        source: str | Path = pushed[0] if pushed is not None else archive
        for run in range(RUNS + 1):  # the first round warms the page cache, not counted
            for name, daemon in daemons.items():
                seconds = daemon.unpack_seconds(source, f"bench{run}")
                if run:
                    times[name].append(seconds)
    finally:
        for daemon in daemons.values():
            daemon.stop()
        if pushed is not None:
            pushed[1].stop()
            shutil.rmtree(pushed[1].base, ignore_errors=True)
    how = "`ctr images pull`" if pushed is not None else "`ctr images import` (no registry)"
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    settings = len({unpacks for _, unpacks in daemons})
    if [r["event"] for r in records] != ["decoded"] * (len(TREES) * (RUNS + 1) * settings):
        print(f"processor records: {records[-3:]}", file=sys.stderr)
        return 1
    route = (
        "seekable erofs+zstd layers (pack), sent down the tar+zstd route"
        if kind == "erofs"
        else "tar+zstd layers, erofs differ with mkfs.erofs --tar"
    )
    rows = []
    for unpacks in sorted({unpacks for _, unpacks in daemons}):
        ours = statistics.median(times["ours", unpacks])
        peer = statistics.median(times["zstd", unpacks])
        which = "containerd's default" if unpacks == 1 else "as `config` writes it"
        rows.append(
            [
                f"{how}, 3 layers, {raw_bytes / 1e6:.0f} MB unpacked, "
                f"max_concurrent_unpacks {unpacks} ({which})",
                f"{ours:.2f} s",
                f"`zstd -dc` as the processor {peer:.2f} s",
                f"{ours / peer:.2f}",
                "<= 1.00",
                "ok" if ours <= peer else "MISSED",
            ]
        )
    print(
        table(
            f"containerd {version}: {route}; median of {RUNS}, interleaved",
            rows,
            ["what", "ours", "peer", "ratio", "target", ""],
        )
    )
    for (who, unpacks), values in times.items():
        print(f"runs (s), {who}, max_concurrent_unpacks {unpacks}: {[round(v, 3) for v in values]}")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
