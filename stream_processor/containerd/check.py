"""``config --check``: does a config.toml make containerd run this processor on EROFS layers?

Each finding names a key and says what containerd does with it. The facts
checked against are ``versions``' table, so a file passes only if the
containerd it is for really hands EROFS layers to the processor.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_processor import PROG, log, mediatypes
from stream_processor.containerd.names import (
    CRI_IMAGES,
    DIFF_SERVICE,
    EROFS_DIFFER,
    EROFS_NODE_PLUGINS,
    TRANSFER,
)
from stream_processor.containerd.platforms import EROFS_FEATURE_SUFFIX
from stream_processor.containerd.render import MAX_CONCURRENT_UNPACKS
from stream_processor.containerd.routes import is_pattern, unreachable_reason
from stream_processor.containerd.versions import PR12506, STOCK, Profile
from stream_processor.errors import UsageError

# Present when the kernel has dm-verity (module or built in): containerd's own check.
DM_VERITY_MODULE = Path("/sys/module/dm_verity")


class Level(enum.Enum):
    """How a finding is printed; only problems fail ``--check`` (exit 1)."""

    PROBLEM = "problem"  # the node does not work as intended
    WARNING = "warning"  # it works, with a catch the operator should know about
    OK = "ok"


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.level.value}: {self.message}"


@dataclass
class CheckReport:
    """Findings about one config file; a non-empty ``problems`` means it does not work."""

    source: str
    profile: Profile
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level is Level.PROBLEM]

    def problem_count(self) -> str:
        """``1 problem``, ``2 problems``."""
        n = len(self.problems)
        return f"{n} problem{'s' if n > 1 else ''}"

    def render(self) -> str:
        lines = [f"checking {self.source} for {self.profile.label}"]
        lines.extend(str(f) for f in self.findings)
        lines.append(f"{self.problem_count()} found" if self.problems else "no problems found")
        return "\n".join(lines) + "\n"


def is_ours(pid: str, entry: Mapping[str, Any]) -> bool:
    """Is this ``[stream_processors]`` entry this processor, whatever the operator named it?"""
    text = " ".join(
        [
            pid,
            str(entry.get("path", "")),
            *map(str, _as_list(entry.get("args"))),
            *map(str, _as_list(entry.get("env"))),
        ]
    )
    if PROG in text or "stream_processor" in text or "EROFS_SP_" in text:
        return True
    return any("erofs" in str(mt) for mt in _as_list(entry.get("accepts")))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def check_config(
    config: Mapping[str, Any],
    profile: Profile,
    source: str = "config.toml",
    check_path: bool = True,
) -> CheckReport:
    """Does ``config`` make ``profile``'s containerd run this processor on EROFS layers?"""
    report = CheckReport(source, profile)
    _check_version(config, profile, report)
    processors = config.get("stream_processors")
    if not isinstance(processors, dict) or not processors:
        report.add(
            Level.PROBLEM, "no stream processor is registered: [stream_processors] is missing"
        )
        return report
    ours = {pid: e for pid, e in processors.items() if isinstance(e, dict) and is_ours(pid, e)}
    if not ours:
        report.add(
            Level.PROBLEM,
            f"{PROG} is not registered: [stream_processors] has only "
            + ", ".join(sorted(processors)),
        )
        return report
    accepted: set[str] = set()
    for pid, entry in ours.items():
        accepted |= _check_entry(pid, entry, profile, report, check_path)
    _check_overlaps(processors, report)
    _check_routes_reached(accepted, profile, report)
    if profile.erofs_plugins:
        _check_erofs_plugins(config, report)
    return report


def _check_version(config: Mapping[str, Any], profile: Profile, report: CheckReport) -> None:
    found = config.get("version", 1)
    accepted = profile.config_versions
    if profile.config_version == 3 and found not in accepted:
        report.add(
            Level.PROBLEM,
            f"config version is {found}, but {profile.label} reads version "
            f"{' or '.join(map(str, accepted))} plugin names; run `containerd config migrate` "
            "(or check with --containerd-version for a 1.x node)",
        )
    elif profile.config_version == 2 and found != 2:
        report.add(Level.PROBLEM, f"config version is {found}; {profile.label} expects version = 2")


def _check_entry(
    pid: str, entry: Mapping[str, Any], profile: Profile, report: CheckReport, check_path: bool
) -> set[str]:
    name = f"stream processor {pid!r}"
    report.add(Level.OK, f"{name} is registered")
    returns = entry.get("returns")
    if returns != mediatypes.OCI_LAYER_TAR:
        report.add(
            Level.PROBLEM,
            f"{name}: returns is {returns!r}; it must be {mediatypes.OCI_LAYER_TAR!r}, "
            "the media type that ends containerd's processor chain",
        )
    else:
        report.add(Level.OK, f"{name}: returns ends the processor chain")
    accepts = entry.get("accepts")
    good: set[str] = set()
    if not isinstance(accepts, list) or not accepts:
        report.add(Level.PROBLEM, f"{name}: accepts is missing or empty; no layer will reach it")
        accepts = []
    for mt in accepts:
        if not isinstance(mt, str):
            report.add(Level.PROBLEM, f"{name}: accepts holds {mt!r}, which is not a string")
            continue
        if is_pattern(mt):
            report.add(
                Level.PROBLEM,
                f"{name}: containerd matches media types exactly; {mt!r} matches nothing",
            )
            continue
        try:
            mediatypes.resolve(mt)
        except UsageError:
            report.add(Level.PROBLEM, f"{name}: accepts {mt!r}, which {PROG} refuses to decode")
            continue
        reason = unreachable_reason(mt, profile)
        if reason:
            report.add(Level.WARNING, f"{name}: accepts {mt!r}, but {reason}")
        good.add(mt)
    for key in ("args", "env"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            report.add(Level.PROBLEM, f"{name}: {key} must be a list of strings")
    env = [v for v in _as_list(entry.get("env")) if isinstance(v, str)]
    for item in env:
        if "=" not in item:
            report.add(Level.PROBLEM, f"{name}: env entry {item!r} is not KEY=VALUE")
    if check_path:
        _check_executable(name, entry.get("path"), report)
    _check_log_file(name, env, profile, report)
    return good


def _check_executable(name: str, path: Any, report: CheckReport) -> None:
    if not isinstance(path, str) or not path:
        report.add(Level.PROBLEM, f"{name}: path is missing")
        return
    if not os.path.isabs(path):
        report.add(
            Level.PROBLEM,
            f"{name}: path {path!r} is not absolute; containerd would look it up in its own "
            "PATH, which is not a shell's",
        )
        return
    if not os.path.exists(path):
        report.add(Level.PROBLEM, f"{name}: path {path} does not exist")
    elif not os.path.isfile(path):
        report.add(Level.PROBLEM, f"{name}: path {path} is not a file")
    elif not os.access(path, os.X_OK):
        report.add(Level.PROBLEM, f"{name}: path {path} is not executable")
    else:
        report.add(Level.OK, f"{name}: path {path} exists and is executable")


def _check_log_file(name: str, env: Sequence[str], profile: Profile, report: CheckReport) -> None:
    values = dict(item.split("=", 1) for item in env if "=" in item)
    target = values.get(log.ENV_FILE)
    if not target:
        if profile.erofs_plugins:
            report.add(
                Level.WARNING,
                f"{name}: no {log.ENV_FILE} in env; {profile.label}'s erofs differ discards "
                "the processor's stderr, so a failure leaves only 'wrong diff id'",
            )
        return
    directory = os.path.dirname(target) or "."
    if not os.path.isabs(target):
        report.add(Level.PROBLEM, f"{name}: {log.ENV_FILE}={target} is not an absolute path")
    elif not os.path.isdir(directory):
        report.add(Level.PROBLEM, f"{name}: the log file's directory {directory} does not exist")
    else:
        report.add(Level.OK, f"{name}: failures are logged to {target}")


def _check_overlaps(processors: Mapping[str, Any], report: CheckReport) -> None:
    owners: dict[str, list[str]] = {}
    for pid, entry in processors.items():
        if isinstance(entry, dict):
            for mt in _as_list(entry.get("accepts")):
                owners.setdefault(str(mt), []).append(pid)
    for mt, pids in sorted(owners.items()):
        if len(pids) > 1:
            report.add(
                Level.PROBLEM,
                f"{mt} is accepted by {len(pids)} processors ({', '.join(sorted(pids))}); "
                "containerd uses whichever it finds first",
            )


def _check_routes_reached(accepted: set[str], profile: Profile, report: CheckReport) -> None:
    if profile.zstd_route is None:
        report.add(
            Level.WARNING,
            f"{profile.label} sends no EROFS layer to a stream processor; "
            "this registration only sees ordinary tar layers",
        )
        return
    if profile.zstd_route in accepted:
        report.add(Level.OK, f"zstd EROFS layers reach the processor as {profile.zstd_route}")
    else:
        hint = (
            f" (if this node's differ is patched as in PR 12506, check with --differ {PR12506})"
            if profile.differ == STOCK
            else ""
        )
        report.add(
            Level.PROBLEM,
            f"{profile.label} sends zstd EROFS layers as {profile.zstd_route}, which no "
            f"{PROG} entry accepts{hint}",
        )
    if profile.gzip_route is not None and profile.gzip_route not in accepted:
        report.add(
            Level.WARNING,
            f"gzip EROFS layers ({profile.gzip_route}) are not routed to the processor",
        )


def _table(config: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    node: Any = config
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _check_erofs_plugins(config: Mapping[str, Any], report: CheckReport) -> None:
    disabled = [str(p) for p in _as_list(config.get("disabled_plugins"))]
    for plugin in EROFS_NODE_PLUGINS:
        if plugin in disabled:
            report.add(Level.PROBLEM, f"{plugin} is in disabled_plugins")
    plugins = _table(config, "plugins")
    default = _as_list(_table(plugins, DIFF_SERVICE).get("default"))
    if "erofs" not in default:
        report.add(
            Level.PROBLEM,
            f'[plugins."{DIFF_SERVICE}"] default does not list "erofs" (containerd\'s default '
            'is ["walking"]); client-side unpacking will not use the erofs differ',
        )
    elif "walking" in default and default.index("walking") < default.index("erofs"):
        report.add(
            Level.PROBLEM, f'[plugins."{DIFF_SERVICE}"] default lists "walking" before "erofs"'
        )
    else:
        report.add(Level.OK, f"the diff service tries the erofs differ first ({default})")
    _check_unpack_config(_table(plugins, TRANSFER), report)
    _check_dmverity(_table(plugins, EROFS_DIFFER), report)
    cri = _table(plugins, CRI_IMAGES).get("snapshotter")
    if cri != "erofs":
        report.add(
            Level.PROBLEM,
            f'[plugins."{CRI_IMAGES}"] snapshotter is {cri or "unset (overlayfs)"!s}; '
            'Kubernetes pulls will not use EROFS (set snapshotter = "erofs")',
        )
    else:
        report.add(Level.OK, "CRI pulls use the erofs snapshotter")


def _check_dmverity(differ: Mapping[str, Any], report: CheckReport) -> None:
    """The 2.3 erofs differ's ``enable_dmverity`` needs the kernel's dm-verity: without it
    the differ fails to load (docs/containerd.md, "The erofs differ's own dm-verity")."""
    if differ.get("enable_dmverity") is True and not DM_VERITY_MODULE.exists():
        report.add(
            Level.WARNING,
            f'[plugins."{EROFS_DIFFER}"] enable_dmverity = true, but this kernel has no '
            f"dm_verity ({DM_VERITY_MODULE} is missing): containerd 2.3 then fails to load the "
            'erofs differ ("dm-verity support check failed"), and with it the diff and '
            "transfer services",
        )


def _check_unpack_config(transfer: Mapping[str, Any], report: CheckReport) -> None:
    """Would transfer-service pulls (``ctr images pull``, CRI) unpack both image shapes with erofs?

    containerd 2.3 matches each manifest's platform against the unpack
    platforms: ``linux/ARCH`` never matches a manifest that requires the OS
    feature ``erofs``, ``linux(+erofs)/ARCH`` matches both. An
    ``unpack_config`` replaces containerd's built-in pair (host platform with
    overlayfs, ``linux(+erofs)/ARCH`` with erofs), so a file that lists only
    ``linux/ARCH`` drops every +erofs image (docs/containerd.md section 3).
    """
    unpack = [u for u in _as_list(transfer.get("unpack_config")) if isinstance(u, dict)]
    erofs_unpack = [u for u in unpack if u.get("snapshotter") == "erofs"]
    wrong_differ = [u for u in erofs_unpack if u.get("differ", "erofs") not in ("erofs", "")]
    if not erofs_unpack:
        report.add(
            Level.PROBLEM,
            f'[plugins."{TRANSFER}"] has no unpack_config with snapshotter = "erofs"; '
            "transfer-service pulls unpack into overlayfs and never reach the erofs differ",
        )
        return
    if wrong_differ:
        report.add(
            Level.PROBLEM,
            f'[plugins."{TRANSFER}"] unpack_config pairs the erofs snapshotter with differ '
            f'{wrong_differ[0].get("differ")!r}; use "erofs"',
        )
        return
    platforms_ = [str(u.get("platform", "")) for u in erofs_unpack]
    featured = [p for p in platforms_ if EROFS_FEATURE_SUFFIX in p]
    plain = [p for p in platforms_ if p and EROFS_FEATURE_SUFFIX not in p]
    if not featured:
        report.add(
            Level.PROBLEM,
            f'[plugins."{TRANSFER}"] unpack_config has no linux(+erofs)/ARCH platform '
            f"(only {', '.join(platforms_) or 'none'}); it replaces containerd's defaults, so "
            "images marked with the OS feature erofs (ctr images convert --erofs, convert "
            "--os-feature erofs) are pulled without unpacking any layer",
        )
    if not plain:
        report.add(
            Level.PROBLEM,
            f'[plugins."{TRANSFER}"] unpack_config has no plain linux/ARCH platform with the '
            "erofs snapshotter; images without OS features (convert's default, every "
            "ordinary image) are not unpacked into erofs",
        )
    if featured and plain:
        report.add(
            Level.OK,
            "transfer-service pulls unpack with the erofs snapshotter and differ "
            f"({', '.join(platforms_)})",
        )
    limit = transfer.get("max_concurrent_unpacks", 1)
    if not isinstance(limit, int) or limit < 2:
        report.add(
            Level.WARNING,
            f'[plugins."{TRANSFER}"] max_concurrent_unpacks is {limit!r}: layers unpack one '
            f"after another (the erofs snapshotter can rebase; {MAX_CONCURRENT_UNPACKS} "
            "measured faster, docs/containerd.md)",
        )
