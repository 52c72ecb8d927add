"""Convert a whole OCI image: plan, convert layers concurrently, rewrite, publish.

1. Plan: walk ``index.json`` (nested indexes too), keep the manifests of the
   wanted platforms, read their configs, and collect every distinct layer
   with the diff_id its config promises.
2. Convert the distinct layers in up to ``jobs`` forked worker processes,
   largest first (unpacking a tar is Python work that holds the GIL; cores
   left over go to the compressor's threads). Results are keyed by source
   digest, so output order and digests do not depend on which layer
   finished first.
3. Rewrite bottom-up, as containerd's converter does: layer descriptors get
   the EROFS media type, new digest and size (and the chunk-table
   annotations); configs get ``rootfs.diff_ids`` = SHA-256 of each raw EROFS
   image; manifests become OCI manifests; index entries get the new digests.
   The image's *shape* (``Shape``) decides what else the index says: by
   default no OS feature at all, so the platform matcher every pull path on
   containerd 2.3 uses by default (CRI's ``platforms.DefaultSpec()``) selects
   the EROFS manifest; ``os_features=("erofs",)`` marks index entry and config
   as ``ctr images convert --erofs`` does; ``keep_source`` also keeps each
   source manifest next to its (feature-marked) EROFS one, for mixed fleets.
   docs/containerd.md says what each pull path selects from each shape.
4. Publish: everything is written into a staging directory next to DST and
   renamed into place at the end, so a failed conversion leaves no DST.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from stream_processor.convert.erofsbuild import find_mkfs
from stream_processor.convert.layers import (
    LayerKind,
    LayerOutcome,
    LayerSettings,
    classify,
    convert_layer,
    resolve_builder,
)
from stream_processor.convert.oci import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Json,
    Layout,
    LayoutWriter,
    open_layout,
    write_archive,
)
from stream_processor.convert.progress import REFRESH_S, Progress
from stream_processor.errors import DataError, Terminated, UsageError
from stream_processor.sizes import human

EROFS_FEATURE = "erofs"
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class ConvertOptions:
    settings: LayerSettings = field(default_factory=LayerSettings)
    jobs: int = 0  # 0: the CPU count
    platforms: tuple[str, ...] = ()
    archive: bool = False
    work_dir: Path | None = None
    os_features: tuple[str, ...] = ()  # marked in each EROFS index entry and config
    keep_source: bool = False  # the index also keeps the source manifests (mixed fleets)

    @property
    def shape(self) -> str:
        """What the written index is, in the words the README's pull table uses."""
        if self.keep_source:
            return "mixed"
        return "os-feature" if self.os_features else "plain"

    def features(self) -> tuple[str, ...]:
        """The OS features the EROFS manifests carry (a mixed index needs ``erofs``)."""
        if self.keep_source and EROFS_FEATURE not in self.os_features:
            return (*self.os_features, EROFS_FEATURE)
        return self.os_features


@dataclass
class ConvertReport:
    source: str
    destination: str
    compression: str
    chunk_size: int | None
    jobs: int
    shape: str = "plain"  # "plain", "os-feature" or "mixed" (ConvertOptions.shape)
    os_features: list[str] = field(default_factory=list)
    builder: str = ""  # how tar layers are built: "tar" (streamed) or "dir" (unpacked)
    mkfs: str = ""  # which mkfs.erofs, and its erofs-utils version
    seconds: float = 0.0
    manifests: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line: what was rebuilt from tar and what was re-wrapped, sizes with units."""
        rebuilt = [layer for layer in self.layers if layer["tar_size"] is not None]
        rewrapped = [layer for layer in self.layers if layer["tar_size"] is None]
        parts = []
        if rebuilt:
            tar = sum(layer["tar_size"] for layer in rebuilt)
            erofs = sum(layer["erofs_size"] for layer in rebuilt)
            parts.append(f"{len(rebuilt)} rebuilt from tar {human(tar)} -> erofs {human(erofs)}")
        if rewrapped:
            erofs = sum(layer["erofs_size"] for layer in rewrapped)
            parts.append(f"{len(rewrapped)} EROFS re-wrapped (erofs {human(erofs)})")
        wrapped = sum(layer["wrapped_size"] for layer in self.layers)
        erofs_manifests = sum(1 for m in self.manifests if m.get("kind") == "erofs")
        shape = self.shape + (f" ({', '.join(self.os_features)})" if self.os_features else "")
        return (
            f"converted {len(self.layers)} layer(s) in {erofs_manifests} manifest(s), "
            f"{shape} index: {', '.join(parts) or 'no layers'} -> {self.compression} "
            f"{human(wrapped)} in {self.seconds:.2f} s -> {self.destination}"
        )


# ---------------------------------------------------------------- platforms


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` -> parts; ``UsageError`` otherwise."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    arch = _ARCH_ALIASES.get(parts[1], parts[1])
    return parts[0], arch, parts[2] if len(parts) == 3 else None


def platform_matches(platform: Json, wanted: tuple[tuple[str, str, str | None], ...]) -> bool:
    if not wanted:
        return True
    arch = _ARCH_ALIASES.get(str(platform.get("architecture")), platform.get("architecture"))
    for os_name, want_arch, variant in wanted:
        same_variant = variant is None or platform.get("variant") == variant
        if platform.get("os") == os_name and arch == want_arch and same_variant:
            return True
    return False


def platform_text(platform: Json) -> str:
    parts = [str(platform.get("os", "?")), str(platform.get("architecture", "?"))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


# ---------------------------------------------------------------- plan


@dataclass
class _ManifestPlan:
    desc: Json
    manifest: Json
    config: Json
    platform: Json


@dataclass
class _IndexPlan:
    index: Json
    desc: Json | None  # None for the top-level index.json
    entries: list[_ManifestPlan | _IndexPlan] = field(default_factory=list)


@dataclass
class _Plan:
    top: _IndexPlan
    layers: dict[str, tuple[Json, str | None]] = field(default_factory=dict)
    seen_platforms: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _media_type_of(layout: Layout, desc: Json) -> str:
    media_type = desc.get("mediaType")
    if isinstance(media_type, str):
        return media_type
    doc = layout.read_json(desc, "manifest")
    found = doc.get("mediaType")
    if isinstance(found, str):
        return found
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _plan_index(
    layout: Layout,
    index: Json,
    desc: Json | None,
    wanted: tuple[tuple[str, str, str | None], ...],
    plan: _Plan,
    depth: int = 0,
) -> _IndexPlan:
    if depth > 8:
        raise DataError("image indexes are nested more than 8 deep; refusing")
    node = _IndexPlan(index=index, desc=desc)
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise DataError("an image index has no 'manifests' list")
    for child in manifests:
        if not isinstance(child, dict):
            raise DataError("an image index lists something that is not a descriptor")
        media_type = _media_type_of(layout, child)
        if media_type in INDEX_TYPES:
            sub = _plan_index(
                layout, layout.read_json(child, "index"), child, wanted, plan, depth + 1
            )
            if sub.entries:
                node.entries.append(sub)
        elif media_type in MANIFEST_TYPES:
            entry = _plan_manifest(layout, child, wanted, plan)
            if entry is not None:
                node.entries.append(entry)
        else:
            plan.skipped.append(f"{child.get('digest')} ({media_type}): not an image manifest")
    return node


def _plan_manifest(
    layout: Layout,
    desc: Json,
    wanted: tuple[tuple[str, str, str | None], ...],
    plan: _Plan,
) -> _ManifestPlan | None:
    platform = desc.get("platform")
    if isinstance(platform, dict) and platform.get("os") == "unknown":
        # BuildKit attestations (in-toto JSON "layers"): nothing to run, nothing to convert.
        plan.skipped.append(f"{desc.get('digest')}: attestation manifest (platform unknown)")
        return None
    manifest = layout.read_json(desc, "manifest")
    config_desc = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layers, list):
        raise DataError(f"manifest {desc.get('digest')} has no config or no layers list")
    config = layout.read_json(config_desc, "config")
    if not isinstance(platform, dict):
        platform = {k: config[k] for k in ("architecture", "os", "variant") if config.get(k)}
    plan.seen_platforms.append(platform_text(platform))
    if not platform_matches(platform, wanted):
        return None
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise DataError(
            f"config {config_desc.get('digest')} lists {len(diff_ids or [])} diff_ids "
            f"for {len(layers)} layers"
        )
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        if not isinstance(layer, dict) or not isinstance(layer.get("digest"), str):
            raise DataError(f"manifest {desc.get('digest')} has a malformed layer descriptor")
        classify(str(layer.get("mediaType", "")))  # fail before any work on an unknown type
        plan.layers.setdefault(layer["digest"], (layer, diff_id))
    return _ManifestPlan(desc=desc, manifest=manifest, config=config, platform=platform)


# ---------------------------------------------------------------- rewrite


def _with_features(platform: Json, features: tuple[str, ...]) -> Json:
    """``platform`` whose ``os.features`` hold ``features`` and no stale ``erofs``.

    A source that was itself converted by containerd carries ``erofs``; it is
    dropped unless asked for, so the default shape really requires nothing.
    """
    out = dict(platform)
    kept = [str(f) for f in out.pop("os.features", None) or [] if f != EROFS_FEATURE]
    kept += [f for f in features if f not in kept]
    if kept:
        out["os.features"] = kept
    return out


def _write_manifest(
    plan: _ManifestPlan,
    results: dict[str, LayerOutcome],
    writer: LayoutWriter,
    features: tuple[str, ...],
) -> Json:
    outcomes = [results[layer["digest"]] for layer in plan.manifest["layers"]]
    config = copy.deepcopy(plan.config)
    config["rootfs"]["diff_ids"] = [o.pack.diff_id for o in outcomes]
    platform = _with_features(plan.platform, features)
    # containerd's converter writes the feature into the config as well
    # (core/images/converter/erofs: UpdateManifestPlatform); so do we, and no
    # stale one either way.
    config.pop("os.features", None)
    if platform.get("os.features"):
        config["os.features"] = platform["os.features"]
    old_config_type = plan.manifest["config"].get("mediaType")
    config_type = OCI_CONFIG if old_config_type in (None, DOCKER_CONFIG) else old_config_type
    manifest: Json = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": writer.add_json(config, config_type),
        "layers": [o.descriptor() for o in outcomes],
    }
    if plan.manifest.get("annotations"):
        manifest["annotations"] = plan.manifest["annotations"]
    desc = writer.add_json(manifest, OCI_MANIFEST)
    desc["platform"] = platform
    if plan.desc.get("annotations"):
        desc["annotations"] = plan.desc["annotations"]
    return desc


def _keep_source(plan: _ManifestPlan, layout: Layout, writer: LayoutWriter) -> Json:
    """Copy the source manifest, its config and layers unchanged; its index entry.

    The entry gets the platform from the config when the source index had
    none, so every matcher can tell the tar manifest from the EROFS one.
    """
    writer.copy_blob(layout, plan.manifest["config"], "config")
    for layer in plan.manifest["layers"]:
        writer.copy_blob(layout, layer, "layer")
    writer.copy_blob(layout, plan.desc, "manifest")
    desc = dict(plan.desc)
    desc.setdefault("mediaType", plan.manifest.get("mediaType") or OCI_MANIFEST)
    desc["platform"] = plan.platform
    return desc


def _write_index(
    node: _IndexPlan,
    results: dict[str, LayerOutcome],
    writer: LayoutWriter,
    options: ConvertOptions,
    layout: Layout,
) -> Json:
    manifests: list[Json] = []
    for e in node.entries:
        if isinstance(e, _IndexPlan):
            manifests.append(_write_index(e, results, writer, options, layout))
            continue
        if options.keep_source:
            manifests.append(_keep_source(e, layout, writer))
        manifests.append(_write_manifest(e, results, writer, options.features()))
    index: Json = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    if node.index.get("annotations"):
        index["annotations"] = node.index["annotations"]
    if node.desc is None:
        return index
    desc = writer.add_json(index, OCI_INDEX)
    for key in ("platform", "annotations"):
        if node.desc.get(key):
            desc[key] = node.desc[key]
    return desc


def _manifest_rows(node: _IndexPlan, index: Json, keep_source: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    descs = iter(index["manifests"])
    for entry in node.entries:
        if isinstance(entry, _IndexPlan):
            next(descs)
            continue
        if keep_source:
            rows.append(_row("source", entry, next(descs)))
        rows.append(_row("erofs", entry, next(descs)))
    return rows


def _row(kind: str, entry: _ManifestPlan, desc: Json) -> dict[str, Any]:
    return {
        "kind": kind,
        "platform": platform_text(entry.platform),
        "os_features": list(desc["platform"].get("os.features", [])),
        "source_digest": entry.desc.get("digest"),
        "digest": desc["digest"],
    }


# ---------------------------------------------------------------- run


def _prepare_destination(dst: Path, archive: bool) -> None:
    if archive:
        if dst.exists() and (dst.is_dir() or dst.stat().st_size > 0):
            raise UsageError(f"{dst} already exists; refusing to overwrite it")
    elif dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"{dst} already exists and is not an empty directory")
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent} is not a directory")


def convert_image(
    src: Path, dst: Path, options: ConvertOptions, progress: Progress | None = None
) -> ConvertReport:
    """Convert the OCI image at ``src`` into an EROFS-layer image at ``dst``."""
    started = time.monotonic()
    jobs = options.jobs or os.cpu_count() or 1
    wanted = tuple(parse_platform(p) for p in options.platforms)
    _prepare_destination(dst, options.archive)
    layout = open_layout(src)
    plan = _Plan(top=_IndexPlan(index={}, desc=None))
    plan.top = _plan_index(layout, layout.index(), None, wanted, plan)
    if not plan.top.entries:
        have = ", ".join(sorted(set(plan.seen_platforms))) or "none"
        asked = ", ".join(options.platforms) or "any"
        raise UsageError(
            f"no image manifest to convert for platform {asked}; the image has: {have}"
        )
    settings = options.settings
    builds = any(
        classify(str(d.get("mediaType", "")))[0] is LayerKind.TAR for d, _ in plan.layers.values()
    )
    if builds:  # decided once, before any work; rewrapping EROFS layers needs no mkfs.erofs
        settings = resolve_builder(settings)
    report = ConvertReport(
        source=str(src),
        destination=str(dst),
        compression=settings.compression.value,
        chunk_size=settings.chunk_size if settings.compression.value == "zstd" else None,
        jobs=jobs,
        shape=options.shape,
        os_features=list(options.features()),
        builder=settings.builder if builds else "",
        mkfs=find_mkfs(settings.mkfs).describe() if builds else "",
        skipped=plan.skipped,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.converting-", dir=dst.parent))
    try:
        writer = LayoutWriter(staging / "layout")
        work_root = Path(tempfile.mkdtemp(prefix="work-", dir=options.work_dir or staging))
        try:
            results = _convert_layers(layout, plan, settings, work_root, writer, jobs, progress)
        finally:
            shutil.rmtree(work_root, ignore_errors=True)
        for outcome in results.values():
            writer.add_file(outcome.blob, outcome.pack.digest)
        index = _write_index(plan.top, results, writer, options, layout)
        writer.finish(index)
        report.manifests = _all_manifest_rows(plan.top, index, writer, options.keep_source)
        report.layers = [results[d].report.as_json() for d in plan.layers]
        _publish(staging, writer.root, dst, options.archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _all_manifest_rows(
    top: _IndexPlan, index: Json, writer: LayoutWriter, keep_source: bool
) -> list[dict[str, Any]]:
    rows = _manifest_rows(top, index, keep_source)
    subs = [d for d in index["manifests"] if d.get("mediaType") == OCI_INDEX]
    nested = [e for e in top.entries if isinstance(e, _IndexPlan)]
    for entry, desc in zip(nested, subs, strict=True):
        rows += _all_manifest_rows(entry, writer.read_json(desc["digest"]), writer, keep_source)
    return rows


# Per-layer progress in shared memory, inherited by forked workers: for layer slot i,
# [3i] bytes read in the current phase, [3i+1] the phase (layers.PHASES), [3i+2] its total.
_COUNTERS: Any = None
_BUSY = False  # in a worker: converting a layer right now


def _worker_sigterm(signum: int, frame: FrameType | None) -> None:
    """In a worker: unwind the layer in progress, which removes its files.

    An idle worker ignores it: it may be blocked in the pool's call queue
    holding the queue's lock, and dying there would hang the other workers;
    the pool's shutdown ends it cleanly instead.
    """
    if _BUSY:
        raise Terminated()


def _worker_init() -> None:
    signal.signal(signal.SIGTERM, _worker_sigterm)
    # The parent decides (it stops us with SIGTERM); a terminal's hangup or Ctrl-C reaches
    # the whole process group, and these would otherwise be the parent's handlers, inherited.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _worker(
    slot: int,
    layout: Layout,
    desc: Json,
    diff_id: str | None,
    settings: LayerSettings,
    work_root: Path,
    blob_dir: Path,
    threads: int,
) -> LayerOutcome:
    """One layer in a worker process; reports progress through ``_COUNTERS[slot]``."""
    global _BUSY
    counters = _COUNTERS

    def on_bytes(n: int) -> None:
        if counters is not None:
            counters[3 * slot] = n

    def on_phase(index: int, total: int) -> None:
        if counters is not None:
            counters[3 * slot + 1], counters[3 * slot + 2] = index, total
            counters[3 * slot] = 0

    _BUSY = True
    try:
        return convert_layer(
            layout,
            desc,
            diff_id,
            settings,
            work_root,
            blob_dir,
            threads=threads,
            on_bytes=on_bytes,
            on_phase=on_phase,
        )
    finally:
        _BUSY = False


def _convert_layers(
    layout: Layout,
    plan: _Plan,
    settings: LayerSettings,
    work_root: Path,
    writer: LayoutWriter,
    jobs: int,
    progress: Progress | None,
) -> dict[str, LayerOutcome]:
    """Convert every distinct layer; several at once in worker processes.

    Processes, not threads: unpacking a tar in Python holds the GIL, and on
    2 cores two layers unpacked at once nearly halve the wall time. Workers
    are forked, so they inherit the open layout and the progress counters.
    """
    layers = [
        (d, desc, diff if isinstance(diff, str) else None)
        for d, (desc, diff) in plan.layers.items()
    ]
    workers = max(1, min(jobs, len(layers)))
    threads = max(1, jobs // workers)  # spare cores go to the compressor
    if progress is not None:
        progress.set_total(len(layers))
    results: dict[str, LayerOutcome] = {}
    if workers == 1:
        for digest, desc, diff_id in layers:
            on_bytes = (lambda n, d=digest: progress.read(d, n)) if progress else None
            on_phase = (lambda i, t, d=digest: progress.phase(d, i, t)) if progress else None
            if progress is not None:
                progress.started(digest)
            outcome = convert_layer(
                layout,
                desc,
                diff_id,
                settings,
                work_root,
                writer.blobs,
                threads=threads,
                on_bytes=on_bytes,
                on_phase=on_phase,
            )
            results[digest] = outcome
            if progress is not None:
                progress.finished(outcome.report)
        return results
    global _COUNTERS
    ctx = multiprocessing.get_context("fork")
    _COUNTERS = counters = ctx.Array("q", 3 * len(layers), lock=False)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
    # Largest first, so the longest layer is not left running alone at the end.
    order = sorted(range(len(layers)), key=lambda i: -int(layers[i][1].get("size", 0)))
    try:
        slots: dict[Future[LayerOutcome], tuple[int, str]] = {}
        for slot in order:
            digest, desc, diff_id = layers[slot]
            future = pool.submit(
                _worker, slot, layout, desc, diff_id, settings, work_root, writer.blobs, threads
            )
            slots[future] = (slot, digest)
        pending = set(slots)
        while pending:
            done, pending = wait(pending, timeout=REFRESH_S, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                results[slots[future][1]] = outcome
                if progress is not None:
                    progress.finished(outcome.report)
            if progress is not None:
                for future in pending:
                    slot, digest = slots[future]
                    progress.phase(digest, counters[3 * slot + 1], counters[3 * slot + 2])
                    if counters[3 * slot]:
                        progress.read(digest, counters[3 * slot])
    except BaseException:
        _stop_workers(pool)  # a failed layer or SIGTERM: do not finish the others first
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _COUNTERS = None
    return results


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM the workers; each unwinds (``Terminated``) and removes its own files."""
    processes = getattr(pool, "_processes", None) or {}  # no public API for this
    for process in list(processes.values()):
        if process.is_alive():
            process.terminate()


def _publish(staging: Path, layout_dir: Path, dst: Path, archive: bool) -> None:
    if archive:
        tmp = staging / "image.tar"
        write_archive(layout_dir, tmp)
        os.replace(tmp, dst)
        return
    if dst.exists():
        dst.rmdir()  # checked empty in _prepare_destination
    os.replace(layout_dir, dst)
