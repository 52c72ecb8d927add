"""Convert a whole OCI image: plan, convert layers concurrently, rewrite, publish.

1. Plan: walk ``index.json`` (nested indexes too), keep the manifests of the
   wanted platforms and collect every distinct layer with its diff_id.
2. Convert the distinct layers in forked worker processes (``_Workers``),
   largest first; results are keyed by source digest, so the output does not
   depend on which layer finished first.
3. Rewrite bottom-up, as containerd's converter does: EROFS layer
   descriptors, ``rootfs.diff_ids`` of the raw images, OCI manifests, new
   index entries. The ``shape`` decides the OS features and whether source
   manifests are kept; docs/containerd.md says what each pull path selects.
4. Publish: written into a staging directory next to DST and renamed into
   place at the end, so a failed conversion leaves no DST.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from stream_processor.convert.erofsbuild import find_mkfs
from stream_processor.convert.layers import (
    LayerKind,
    LayerOutcome,
    LayerReport,
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
    Platform,
    open_layout,
    platform_matches,
    platform_text,
    write_archive,
)
from stream_processor.convert.progress import REFRESH_S, Progress
from stream_processor.errors import DataError, Terminated, UsageError
from stream_processor.sizes import human

EROFS_FEATURE = "erofs"


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


@dataclass(frozen=True)
class ManifestRow:
    """One manifest of the written index, in the report."""

    kind: str  # "erofs", or "source" for a manifest kept as it was (--keep-source)
    platform: str
    os_features: list[str]
    source_digest: str | None
    digest: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    manifests: list[ManifestRow] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` report: these fields in this order, rows and layers as objects."""
        doc = dict(self.__dict__)
        doc["manifests"] = [row.as_json() for row in self.manifests]
        doc["layers"] = [layer.as_json() for layer in self.layers]
        return doc

    def summary(self) -> str:
        """One line: what was rebuilt from tar and what was re-wrapped, sizes with units."""
        rebuilt = [layer for layer in self.layers if layer.tar_size is not None]
        rewrapped = [layer for layer in self.layers if layer.tar_size is None]
        parts = []
        if rebuilt:
            tar = sum(layer.tar_size or 0 for layer in rebuilt)
            erofs = sum(layer.erofs_size for layer in rebuilt)
            parts.append(f"{len(rebuilt)} rebuilt from tar {human(tar)} -> erofs {human(erofs)}")
        if rewrapped:
            erofs = sum(layer.erofs_size for layer in rewrapped)
            parts.append(f"{len(rewrapped)} EROFS re-wrapped (erofs {human(erofs)})")
        wrapped = sum(layer.wrapped_size for layer in self.layers)
        erofs_manifests = sum(1 for m in self.manifests if m.kind == "erofs")
        shape = self.shape + (f" ({', '.join(self.os_features)})" if self.os_features else "")
        return (
            f"converted {len(self.layers)} layer(s) in {erofs_manifests} manifest(s), "
            f"{shape} index: {', '.join(parts) or 'no layers'} -> {self.compression} "
            f"{human(wrapped)} in {self.seconds:.2f} s -> {self.destination}"
        )


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


def _media_type_of(layout: Layout, desc: Json) -> str:
    media_type = desc.get("mediaType")
    if isinstance(media_type, str):
        return media_type
    doc = layout.read_json(desc, "manifest")
    found = doc.get("mediaType")
    if isinstance(found, str):
        return found
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


@dataclass
class _Plan:
    """The walk of the source's indexes and what it found on the way."""

    layout: Layout
    wanted: tuple[Platform, ...]
    layers: dict[str, tuple[Json, str | None]] = field(default_factory=dict)  # by digest
    seen_platforms: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def index(self, index: Json, desc: Json | None, depth: int = 0) -> _IndexPlan:
        """The wanted manifests under ``index`` (``desc`` None: the top ``index.json``)."""
        if depth > 8:
            raise DataError("image indexes are nested more than 8 deep; refusing")
        node = _IndexPlan(index=index, desc=desc)
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise DataError("an image index has no 'manifests' list")
        for child in manifests:
            if not isinstance(child, dict):
                raise DataError("an image index lists something that is not a descriptor")
            media_type = _media_type_of(self.layout, child)
            if media_type in INDEX_TYPES:
                sub = self.index(self.layout.read_json(child, "index"), child, depth + 1)
                if sub.entries:
                    node.entries.append(sub)
            elif media_type in MANIFEST_TYPES:
                entry = self._manifest(child)
                if entry is not None:
                    node.entries.append(entry)
            else:
                self.skipped.append(f"{child.get('digest')} ({media_type}): not an image manifest")
        return node

    def _manifest(self, desc: Json) -> _ManifestPlan | None:
        platform = desc.get("platform")
        if isinstance(platform, dict) and platform.get("os") == "unknown":
            # BuildKit attestations (in-toto JSON "layers"): nothing to run, nothing to convert.
            self.skipped.append(f"{desc.get('digest')}: attestation manifest (platform unknown)")
            return None
        manifest = self.layout.read_json(desc, "manifest")
        config_desc = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(config_desc, dict) or not isinstance(layers, list):
            raise DataError(f"manifest {desc.get('digest')} has no config or no layers list")
        config = self.layout.read_json(config_desc, "config")
        if not isinstance(platform, dict):
            platform = {k: config[k] for k in ("architecture", "os", "variant") if config.get(k)}
        self.seen_platforms.append(platform_text(platform))
        if not platform_matches(platform, self.wanted):
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
            diff = diff_id if isinstance(diff_id, str) else None
            self.layers.setdefault(layer["digest"], (layer, diff))
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
) -> tuple[Json, list[ManifestRow]]:
    """The rewritten index (its descriptor, for a nested one) and the report's rows for it.

    The rows list this index's own manifests first, then those of each nested index.
    """
    manifests: list[Json] = []
    rows: list[ManifestRow] = []
    nested_rows: list[ManifestRow] = []
    for e in node.entries:
        if isinstance(e, _IndexPlan):
            desc, sub_rows = _write_index(e, results, writer, options, layout)
            manifests.append(desc)
            nested_rows += sub_rows
            continue
        if options.keep_source:
            manifests.append(_keep_source(e, layout, writer))
            rows.append(_row("source", e, manifests[-1]))
        manifests.append(_write_manifest(e, results, writer, options.features()))
        rows.append(_row("erofs", e, manifests[-1]))
    index: Json = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    if node.index.get("annotations"):
        index["annotations"] = node.index["annotations"]
    if node.desc is None:
        return index, rows + nested_rows
    desc = writer.add_json(index, OCI_INDEX)
    for key in ("platform", "annotations"):
        if node.desc.get(key):
            desc[key] = node.desc[key]
    return desc, rows + nested_rows


def _row(kind: str, entry: _ManifestPlan, desc: Json) -> ManifestRow:
    return ManifestRow(
        kind=kind,
        platform=platform_text(entry.platform),
        os_features=list(desc["platform"].get("os.features", [])),
        source_digest=entry.desc.get("digest"),
        digest=desc["digest"],
    )


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
    wanted = tuple(Platform.parse(p) for p in options.platforms)
    _prepare_destination(dst, options.archive)
    layout = open_layout(src)
    plan = _Plan(layout, wanted)
    top = plan.index(layout.index(), None)
    if not top.entries:
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
        builder=settings.builder.value if builds else "",
        mkfs=find_mkfs(settings.mkfs).describe() if builds else "",
        skipped=plan.skipped,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.converting-", dir=dst.parent))
    try:
        writer = LayoutWriter(staging / "layout")
        work_root = Path(tempfile.mkdtemp(prefix="work-", dir=options.work_dir or staging))
        layers = [_Layer(d, desc, diff) for d, (desc, diff) in plan.layers.items()]
        try:
            workers = _Workers(layers, settings, layout, work_root, writer.blobs, jobs)
            results = workers.run(progress)
        finally:
            shutil.rmtree(work_root, ignore_errors=True)
        for outcome in results.values():
            writer.add_file(outcome.blob, outcome.pack.digest)
        index, report.manifests = _write_index(top, results, writer, options, layout)
        writer.finish(index)
        report.layers = [results[d].report for d in plan.layers]
        _publish(staging, writer.root, dst, options.archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.seconds = round(time.monotonic() - started, 3)
    return report


# ---------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Layer:
    digest: str
    desc: Json
    diff_id: str | None  # what the config promises


class _Board:
    """Shared memory between the parent and its forked workers (no lock: one writer a cell).

    Per layer slot: the phase (an index into ``layers.PHASES``, -1 while
    queued), that phase's total bytes, the bytes read in it, and the pid of
    the worker converting it (0 before it starts). Last, the parent's stop flag.
    """

    PHASE, TOTAL, BYTES, PID = range(4)

    def __init__(self, slots: int) -> None:
        self._cells: Any = multiprocessing.get_context("fork").Array("q", 4 * slots + 1, lock=False)
        self._stop = 4 * slots
        for slot in range(slots):
            self._cells[4 * slot + self.PHASE] = -1

    def get(self, slot: int, field: int) -> int:
        return int(self._cells[4 * slot + field])

    def set(self, slot: int, field: int, value: int) -> None:
        self._cells[4 * slot + field] = value

    @property
    def stopping(self) -> bool:
        return bool(self._cells[self._stop])

    def stop(self) -> None:
        self._cells[self._stop] = 1


@dataclass
class _InWorker:
    """A worker process's own state: its board, and whether it is converting a layer now."""

    board: _Board
    busy: bool = False

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Unwind the layer in progress, which removes its files.

        An idle worker ignores it: it may be blocked in the pool's call queue
        holding the queue's lock, and dying there would hang the other workers;
        the pool's shutdown ends it cleanly instead.
        """
        if self.busy:
            raise Terminated()


_IN_WORKER: _InWorker | None = None  # set in each worker process by _worker_init


def _worker_init(board: _Board) -> None:
    global _IN_WORKER
    _IN_WORKER = state = _InWorker(board)
    signal.signal(signal.SIGTERM, state.on_sigterm)
    # The parent decides (it stops us with SIGTERM); a terminal's hangup or Ctrl-C reaches
    # the whole process group, and these would otherwise be the parent's handlers, inherited.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _convert_in_worker(
    slot: int,
    layer: _Layer,
    layout: Layout,
    settings: LayerSettings,
    work_root: Path,
    blob_dir: Path,
    threads: int,
) -> LayerOutcome:
    """One layer in a worker process; reports progress on the board at ``slot``."""
    state = _IN_WORKER
    assert state is not None, "runs in a worker started by _Workers"
    board = state.board

    def on_phase(index: int, total: int) -> None:
        board.set(slot, _Board.BYTES, 0)
        board.set(slot, _Board.TOTAL, total)
        board.set(slot, _Board.PHASE, index)

    state.busy = True
    try:
        board.set(slot, _Board.PID, os.getpid())  # first: the parent may be stopping now
        if board.stopping:  # queued before the parent stopped: not worth starting
            raise Terminated()
        return convert_layer(
            layout,
            layer.desc,
            layer.diff_id,
            settings,
            work_root,
            blob_dir,
            threads=threads,
            on_bytes=lambda n: board.set(slot, _Board.BYTES, n),
            on_phase=on_phase,
        )
    finally:
        state.busy = False


class _Workers:
    """Converts every distinct layer in forked worker processes, largest first.

    Processes, not threads: unpacking a tar in Python holds the GIL. Cores
    left over when there are fewer layers than ``jobs`` go to each layer's
    compressor threads. Workers are forked, so they inherit the open layout
    and the board; the parent polls the board for the live line and, to stop
    (a failed layer, a signal), SIGTERMs the workers the board names.
    """

    def __init__(
        self,
        layers: Sequence[_Layer],
        settings: LayerSettings,
        layout: Layout,
        work_root: Path,
        blob_dir: Path,
        jobs: int,
    ) -> None:
        self._layers = layers
        self._settings = settings
        self._layout = layout
        self._work_root = work_root
        self._blob_dir = blob_dir
        self._count = max(1, min(jobs, len(layers)))
        self._threads = max(1, jobs // self._count)  # spare cores go to the compressor
        self._board = _Board(len(layers))

    def run(self, progress: Progress | None) -> dict[str, LayerOutcome]:
        """The outcome of each layer by source digest; the first failure stops the rest."""
        if progress is not None:
            progress.set_total(len(self._layers))
        pool = ProcessPoolExecutor(
            self._count,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(self._board,),
        )
        results: dict[str, LayerOutcome] = {}
        try:
            slots: dict[Future[LayerOutcome], int] = {}
            # Largest first, so the longest layer is not left running alone at the end.
            order = sorted(
                range(len(self._layers)), key=lambda i: -int(self._layers[i].desc.get("size", 0))
            )
            for slot in order:
                future = pool.submit(
                    _convert_in_worker,
                    slot,
                    self._layers[slot],
                    self._layout,
                    self._settings,
                    self._work_root,
                    self._blob_dir,
                    self._threads,
                )
                slots[future] = slot
            pending = set(slots)
            while pending:
                done, pending = wait(pending, timeout=REFRESH_S, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    results[self._layers[slots[future]].digest] = outcome
                    if progress is not None:
                        progress.finished(outcome.report)
                if progress is not None:
                    for future in pending:
                        self._show(progress, slots[future])
        except BaseException:
            self._stop(slots.values())  # a failed layer or SIGTERM: do not finish the others
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def _show(self, progress: Progress, slot: int) -> None:
        phase = self._board.get(slot, _Board.PHASE)
        if phase < 0:
            return  # still queued
        digest = self._layers[slot].digest
        progress.phase(digest, phase, self._board.get(slot, _Board.TOTAL))
        read = self._board.get(slot, _Board.BYTES)
        if read:
            progress.read(digest, read)

    def _stop(self, slots: Iterable[int]) -> None:
        """SIGTERM each worker on a layer; it unwinds (``Terminated``) and removes its files.

        Once per worker: a second signal could interrupt its clean-up. One that
        has finished its layer and is idle ignores it.
        """
        self._board.stop()
        for pid in {self._board.get(slot, _Board.PID) for slot in slots} - {0}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _publish(staging: Path, layout_dir: Path, dst: Path, archive: bool) -> None:
    if archive:
        tmp = staging / "image.tar"
        write_archive(layout_dir, tmp)
        os.replace(tmp, dst)
        return
    if dst.exists():
        dst.rmdir()  # checked empty in _prepare_destination
    os.replace(layout_dir, dst)
