"""Pull time on a real containerd 2.3: the processor path against mkfs.erofs on the node,
and ``max_concurrent_unpacks`` 1-4 (the value ``config`` writes is chosen from this).

Needs ``EROFS_SP_CONTAINERD23_BIN`` (a containerd 2.3 bin directory), root,
``docker-registry`` and ``skopeo``; without them it prints why and exits 0.
The image: 3 tar+gzip layers of ``/usr/share`` directories (locale, doc,
i18n + zoneinfo), converted by ``convert`` (default shape) and pushed to a
private registry with the source image. Each figure is the median of
``RUNS`` ``ctr images pull --snapshotter erofs`` runs (the CRI path), each into
a fresh namespace so every layer is unpacked again; the registry is local,
so it is unpacking that is timed, not the network.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests package: the 2.3 harness is reused, not copied

from common import table  # noqa: E402

from stream_processor.containerd.render import MAX_CONCURRENT_UNPACKS  # noqa: E402
from tests.builders import write_wrapper  # noqa: E402
from tests.containerd_harness import start_registry  # noqa: E402
from tests.daemon_helpers import BIN_ENV, stop_daemon  # noqa: E402
from tests.oci_builder import OCI_INDEX, Image, LayoutBuilder, tar_tree  # noqa: E402
from tests.test_containerd_23 import ARCH, pull, snippet_23, start_daemon  # noqa: E402

RUNS = 5
LIMITS = (1, 2, 3, 4)
PEER_LIMITS = (1, MAX_CONCURRENT_UNPACKS)
SOURCES = (
    (Path("/usr/share/locale"),),
    (Path("/usr/share/doc"),),
    (Path("/usr/share/i18n"), Path("/usr/share/zoneinfo")),
)


def _layout(root: Path) -> Path:
    builder = LayoutBuilder(root)
    tars = []
    for i, dirs in enumerate(SOURCES):
        tree = root.parent / f"tree{i}"
        for d in dirs:
            shutil.copytree(d, tree / d.name, symlinks=True)
        tars.append(tar_tree(tree))
    manifest = builder.image(Image(tars, "gzip", architecture=ARCH))
    inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest]}
    return builder.finish([builder.json_blob(inner, OCI_INDEX)], ref="latest")


def main() -> int:
    bin23 = os.environ.get(BIN_ENV)
    registry_bin = shutil.which("docker-registry")
    missing = [
        why
        for why, absent in (
            (f"{BIN_ENV} is not set", not bin23),
            ("not root", os.geteuid() != 0),
            ("no docker-registry", registry_bin is None),
            ("no skopeo", shutil.which("skopeo") is None),
        )
        if absent
    ]
    if missing:
        print(f"bench_unpack_23: skipped ({', '.join(missing)})")
        return 0
    assert bin23 is not None and registry_bin is not None
    work = Path(tempfile.mkdtemp(prefix="sp-bench23-"))
    registry = start_registry(registry_bin, work / "registry")
    try:
        src = _layout(work / "src")
        dst = work / "erofs"
        subprocess.run(
            [sys.executable, "-m", "stream_processor", "convert", str(src), str(dst), "--quiet"],
            check=True,
            cwd=ROOT,
        )
        erofs_ref = registry.push(dst, "latest", "bench/erofs")
        tar_ref = registry.push(src, "latest", "bench/tar")
        # One daemon per setting, all running at once, pulls interleaved round by round:
        # the machine is shared, so noise then falls on every setting alike.
        daemons = {}
        try:
            for limit in LIMITS:
                base = work / f"d{limit}"
                snippet = snippet_23(write_wrapper(base / "bin"), base / "processor.log")
                snippet = snippet.replace(
                    f"max_concurrent_unpacks = {MAX_CONCURRENT_UNPACKS}",
                    f"max_concurrent_unpacks = {limit}",
                )
                daemons[limit] = start_daemon(Path(bin23), base, snippet)
            times: dict[int, list[float]] = {limit: [] for limit in LIMITS}
            tar_times: dict[int, list[float]] = {limit: [] for limit in PEER_LIMITS}
            for run in range(RUNS):
                for limit, (_, daemon) in daemons.items():
                    got = pull(daemon, f"e{run}", erofs_ref)
                    assert got.code == 0 and got.erofs_applied == len(SOURCES), got
                    times[limit].append(got.seconds)
                    if limit in PEER_LIMITS:
                        peer = pull(daemon, f"t{run}", tar_ref)
                        assert peer.code == 0 and peer.tar_applied == len(SOURCES), peer
                        tar_times[limit].append(peer.seconds)
        finally:
            for limit, (proc, _) in daemons.items():
                stop_daemon(proc)
                subprocess.run(["umount", "-R", str(work / f"d{limit}" / "state")],
                               capture_output=True)  # fmt: skip
        results = {limit: statistics.median(t) for limit, t in times.items()}
        rows = []
        for limit in LIMITS:
            peer_s = ratio = ""
            if limit in PEER_LIMITS:
                peer_median = statistics.median(tar_times[limit])
                peer_s, ratio = f"{peer_median:.2f} s", f"{results[limit] / peer_median:.2f}"
            spread = f"{min(times[limit]):.2f}-{max(times[limit]):.2f} s"
            rows.append([str(limit), f"{results[limit]:.2f} s ({spread})", peer_s, ratio])
        best = min(results, key=lambda k: results[k])
        print(
            table(
                f"containerd 2.3 pull, 3 layers, median of {RUNS} (best max_concurrent_unpacks: "
                f"{best})",
                rows,
                [
                    "max_concurrent_unpacks",
                    "EROFS image (processor): median (range)",
                    "tar+gzip image (mkfs.erofs --tar on the node)",
                    "ratio",
                ],
            )
        )
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
