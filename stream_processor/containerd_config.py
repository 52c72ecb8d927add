"""containerd ``config.toml`` for this processor: write the right snippet, check an existing one.

Which media type string containerd sends a processor depends on the
containerd version and on its differ (docs/containerd.md section 1): stock 2.3
sends zstd-wrapped EROFS down the ordinary ``tar+zstd`` route and rejects
``+gzip`` before any processor runs, a differ patched as in containerd
PR 12506 sends ``application/vnd.erofs.layer.v1+zstd|gzip`` under its own
name, and nothing before 2.3 sends EROFS to a processor at all. A hand-written
``accepts`` list that guesses wrong is silently never used, so both the
generator and the checker here are driven by one table of those facts
(``Profile``) rather than by free text.

Kept out of the decode path: imported only by the ``config`` command and tests.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_processor import PROG, log, mediatypes
from stream_processor.errors import DataError, InputOutputError, UsageError, no_such_file

PROCESSOR_ID = "io.containerd.processor.v1.erofs"
DEFAULT_EXECUTABLE = "/usr/local/bin/erofs-stream-processor"
DEFAULT_LOG_FILE = "/var/log/erofs-stream-processor.log"

DIFF_SERVICE = "io.containerd.service.v1.diff-service"
EROFS_DIFFER = "io.containerd.differ.v1.erofs"
EROFS_SNAPSHOTTER = "io.containerd.snapshotter.v1.erofs"
TRANSFER = "io.containerd.transfer.v1.local"
CRI_IMAGES = "io.containerd.cri.v1.images"

EROFS_FEATURE_SUFFIX = "(+erofs)"  # platforms.FormatAll's spelling of the OS feature
# Layers the transfer service unpacks at once. The erofs snapshotter has the
# "rebase" capability, so containerd 2.3 unpacks layers in parallel when this
# is above 1 (its default is 1); the value is the measured best on a 2-core
# node (docs/containerd.md, "max_concurrent_unpacks").
MAX_CONCURRENT_UNPACKS = 2

# Present when the kernel has dm-verity (module or built in): containerd's own check.
DM_VERITY_MODULE = Path("/sys/module/dm_verity")

STOCK = "stock"
PR12506 = "pr12506"
DIFFERS = (STOCK, PR12506)

GZIP_REJECTED = (
    "stock containerd 2.3 rejects application/vnd.erofs.layer.v1+gzip in its erofs differ "
    '("unsupported erofs layer suffix: gzip") before any stream processor runs; re-pack the '
    f"layer as +zstd ({PROG} pack) or run a differ that routes +gzip (--differ {PR12506})"
)


@dataclass(frozen=True)
class Profile:
    """What one containerd version (and differ) does with EROFS layers.

    ``zstd_route``/``gzip_route`` are the media types a processor must accept
    to be handed a zstd/gzip-wrapped EROFS layer; ``None`` means no processor
    ever sees one.
    """

    version: str
    differ: str
    config_version: int
    zstd_route: str | None
    gzip_route: str | None
    erofs_plugins: bool  # the node needs the erofs snapshotter + differ settings
    title: str
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        suffix = " with a PR 12506 differ" if self.differ == PR12506 else ""
        return f"containerd {self.version}{suffix}"

    def default_routes(self) -> tuple[str, ...]:
        routes = tuple(r for r in (self.zstd_route, self.gzip_route) if r)
        return routes or (mediatypes.OCI_LAYER_TAR_ZSTD,)


_BEFORE_23_NOTES = (
    "No containerd before 2.3 hands an EROFS layer to a stream processor: its unpacker "
    "does not count application/vnd.erofs.layer.v1+zstd|gzip as layers (seen on 2.1.9: "
    '"mismatched image rootfs and manifest layers"), and the 2.0-2.2 erofs differ '
    'rejects them ("currently unsupported media type").',
    "This registration puts the processor on the ordinary tar+zstd route, where it passes "
    "tar layers through byte for byte (and validates an EROFS payload if one arrives). "
    "It is what the project's real-daemon tests run on Debian's containerd 1.6.20 and 2.1.9.",
)

KNOWN_VERSIONS = ("1.6", "1.7", "2.0", "2.1", "2.2", "2.3")
LATEST = KNOWN_VERSIONS[-1]


def profile_for(version: str | None = None, differ: str = STOCK) -> Profile:
    """The profile for ``version`` ("2.3", "2.3.4", "v1.6.20"; default: the latest known).

    Raises ``UsageError`` for versions this tool knows nothing about and for a
    PR 12506 differ on a version it was never built for.
    """
    wanted = normalize_version(version or LATEST)
    if differ not in DIFFERS:
        raise UsageError(f"unknown differ {differ!r}; use one of: {', '.join(DIFFERS)}")
    major_minor = tuple(int(p) for p in wanted.split("."))
    if wanted not in KNOWN_VERSIONS and major_minor < (1, 6):
        raise UsageError(
            f"containerd {wanted} is not supported; known versions: {', '.join(KNOWN_VERSIONS)}"
        )
    newer = wanted not in KNOWN_VERSIONS  # a release after the latest one observed
    if major_minor < (2, 3):
        if differ == PR12506:
            raise UsageError(
                f"the PR 12506 differ exists only as a patched containerd {LATEST}; "
                f"containerd {wanted} has no erofs differ that routes EROFS layers"
            )
        return Profile(
            version=wanted,
            differ=STOCK,
            config_version=2 if major_minor < (2, 0) else 3,
            zstd_route=None,
            gzip_route=None,
            erofs_plugins=False,
            title=f"containerd {wanted}: ordinary tar+zstd layers only",
            notes=_BEFORE_23_NOTES,
        )
    assumed = (
        (f"containerd {wanted} was not observed; this assumes it behaves like {LATEST}.",)
        if newer
        else ()
    )
    if differ == PR12506:
        return Profile(
            version=wanted,
            differ=PR12506,
            config_version=3,
            zstd_route=mediatypes.EROFS_LAYER_ZSTD,
            gzip_route=mediatypes.EROFS_LAYER_GZIP,
            erofs_plugins=True,
            title=f"containerd {wanted} with an erofs differ patched as in PR 12506",
            notes=(
                *assumed,
                "A differ patched as in containerd PR 12506 sends any layer whose media type "
                "is application/vnd.erofs.layer.v1 or ends in .erofs, with +zstd or +gzip, down "
                "the processor chain under its own media type.",
                "containerd matches accepts by exact string: list every media type your images "
                "use (a pattern such as *.erofs+zstd matches nothing).",
            ),
        )
    return Profile(
        version=wanted,
        differ=STOCK,
        config_version=3,
        zstd_route=mediatypes.OCI_LAYER_TAR_ZSTD,
        gzip_route=None,
        erofs_plugins=True,
        title=f"containerd {wanted} with the erofs snapshotter and erofs differ",
        notes=(
            *assumed,
            "The erofs differ sends a zstd-wrapped EROFS layer "
            "(application/vnd.erofs.layer.v1+zstd) down the processor chain as "
            "application/vnd.oci.image.layer.v1.tar+zstd: that shared route is the only "
            "one on which a stream processor sees it.",
            "Every ordinary tar+zstd layer takes the same route; the processor passes tar "
            "through byte for byte and validates only EROFS.",
            "The erofs differ ignores the processor's exit status and stderr; a failure "
            "shows only as 'wrong diff id', so the reason is written to EROFS_SP_LOG_FILE.",
            f"gzip: {GZIP_REJECTED}.",
        ),
    )


def normalize_version(text: str) -> str:
    """``v2.3.4`` / ``2.3.4~ds1`` / ``2.3`` -> ``2.3``."""
    raw = text.strip().lstrip("vV")
    parts = raw.replace("~", ".").replace("-", ".").split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UsageError(
            f"not a containerd version: {text!r} (expected e.g. 2.3 or 1.6.20)"
        ) from None
    return f"{major}.{minor}"


def resolve_routes(names: Sequence[str] | None, profile: Profile) -> tuple[str, ...]:
    """Turn ``--routes`` entries into media types, refusing ones the version never sends.

    An entry the chosen containerd would never send is an error, not a warning:
    a registration that is never used is exactly the silent failure this
    generator exists to prevent.
    """
    if not names:
        return profile.default_routes()
    routes: list[str] = []
    for name in names:
        if "*" in name:
            raise UsageError(
                f"containerd matches media types exactly; {name.strip()!r} would match nothing"
            )
        # a short name or a media type the processor accepts, else a UsageError naming them
        mt = mediatypes.resolve_name(name)
        problem = unreachable_reason(mt, profile)
        if problem:
            raise UsageError(problem)
        if mt not in routes:
            routes.append(mt)
    return tuple(routes)


def unreachable_reason(media_type: str, profile: Profile) -> str | None:
    """Why ``profile``'s containerd never hands ``media_type`` to a processor, or None."""
    route = mediatypes.resolve(media_type)
    if route.payload is mediatypes.Payload.EROFS_OR_TAR:
        return None  # ordinary tar layers do arrive on the shared routes
    if not profile.erofs_plugins:
        return (
            f"{profile.label} never sends {media_type} to a stream processor: its differs "
            "reject EROFS media types"
        )
    if route.compression is mediatypes.Compression.NONE:
        return f"{profile.label} copies an uncompressed EROFS layer as is; no processor runs"
    if profile.differ == PR12506:
        return None
    if route.compression is mediatypes.Compression.GZIP:
        return GZIP_REJECTED
    return (
        f"{profile.label} never sends {media_type} to a stream processor: its erofs differ "
        f"sends zstd EROFS layers as {mediatypes.OCI_LAYER_TAR_ZSTD} (use --routes tar+zstd, "
        f"or --differ {PR12506} for a patched differ)"
    )


@dataclass(frozen=True)
class Executable:
    """How containerd should start the processor: ``path`` plus leading ``args``/``env``.

    ``note`` says why this one was chosen when it is not simply what the user
    ran or named (it is printed on stderr, so nothing is registered silently).
    """

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    note: str = field(default="", compare=False)


def find_executable(explicit: str | None = None, invoked: str | None = None) -> Executable:
    """What containerd should start: ``explicit``, else what was invoked, else a search.

    ``invoked`` is ``sys.argv[0]`` of the running command: the console script
    (register that script, not another one on PATH whose shebang may name
    another venv) or ``stream_processor/__main__.py`` for ``python -m`` (register
    this interpreter). Only when it is neither is PATH searched, and the
    result carries a note saying so. containerd does not share a login
    shell's PATH (systemd gives it a short one), so the result is always
    absolute. When the package is not installed in the interpreter's own
    site-packages (a source checkout), PYTHONPATH is added so that the
    interpreter containerd starts can import it.
    """
    if explicit:
        return Executable(check_executable_path(explicit))
    if invoked and os.path.basename(invoked) == PROG and os.path.isfile(invoked):
        return Executable(os.path.abspath(invoked))
    if invoked and _is_this_package_main(invoked):
        return _this_interpreter()
    found = shutil.which(PROG)
    if found:
        path = os.path.abspath(found)
        return Executable(path, note=f"registering {path}, the {PROG} found on PATH")
    exe = _this_interpreter()
    return Executable(
        exe.path,
        exe.args,
        exe.env,
        note=f"registering {exe.path} -m stream_processor: no {PROG} on PATH",
    )


def check_executable_path(path: str) -> str:
    """``--path`` must be absolute: containerd resolves nothing against a shell's cwd or PATH."""
    if not os.path.isabs(path):
        raise UsageError(
            f"--path {path} is not absolute; containerd needs the full path "
            f"(e.g. {os.path.abspath(path)})"
        )
    return os.path.normpath(path)


def _is_this_package_main(invoked: str) -> bool:
    here = Path(__file__).resolve().parent / "__main__.py"
    try:
        return Path(invoked).resolve() == here
    except OSError:
        return False


def _this_interpreter() -> Executable:
    package_parent = str(Path(__file__).resolve().parent.parent)
    env: tuple[str, ...] = ()
    if not any(os.path.abspath(p) == package_parent for p in _site_dirs()):
        env = (f"PYTHONPATH={package_parent}",)
    return Executable(os.path.abspath(sys.executable), ("-m", "stream_processor"), env)


def _site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    if isinstance(user, str):
        dirs.append(user)
    return dirs


def host_platform() -> str:
    """containerd's platform string for this machine (``linux/amd64``, ``linux/arm64``)."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return f"linux/{arch}"


# GOARCH values containerd builds for Linux.
ARCHES = ("386", "amd64", "arm", "arm64", "loong64", "mips64le", "ppc64le", "riscv64", "s390x")


def check_platform(text: str) -> str:
    """``--platform`` must be ``linux/ARCH[/VARIANT]`` with an architecture containerd knows.

    containerd compares unpack platforms with image platforms; a misspelt one
    matches no image and silently disables unpacking with the erofs snapshotter.
    """
    parts = text.split("/")
    os_name = parts[0].split("(", 1)[0]
    if len(parts) not in (2, 3) or os_name != "linux" or parts[1] not in ARCHES:
        raise UsageError(
            f"--platform {text!r} is not a Linux platform; use linux/ARCH (ARCH one of "
            f"{', '.join(ARCHES)}), e.g. {host_platform()}"
        )
    return text


@dataclass(frozen=True)
class SnippetOptions:
    """Everything a generated snippet depends on."""

    profile: Profile
    executable: Executable
    routes: tuple[str, ...]
    log_file: str | None = DEFAULT_LOG_FILE
    log_level: str | None = None
    platform: str = "linux/amd64"
    extra_args: tuple[str, ...] = ()


def toml_string(value: str) -> str:
    """A TOML basic string (double quotes, escapes for backslash, quote and control bytes)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def _wrap(text: str, prefix: str = "# ", width: int = 88) -> list[str]:
    import textwrap

    return textwrap.wrap(
        text,
        width=width,
        initial_indent=prefix,
        subsequent_indent=prefix,
        break_on_hyphens=False,
        break_long_words=False,
    )


def render(options: SnippetOptions) -> str:
    """The config.toml text for ``options``: comments say which versions and routes it is for."""
    p = options.profile
    exe = options.executable
    env = list(exe.env)
    if options.log_file:
        env.append(f"{log.ENV_FILE}={options.log_file}")
    if options.log_level:
        env.append(f"{log.ENV_LEVEL}={options.log_level}")
    lines = [f"# {PROG}: {p.title}.", f"# Generated by `{PROG} config` for {p.label}."]
    lines.append("#")
    lines.append("# Routes (media types containerd hands to this processor):")
    for mt in options.routes:
        what = (
            "ordinary tar layers pass through, EROFS is validated"
            if mediatypes.resolve(mt).payload is mediatypes.Payload.EROFS_OR_TAR
            else "EROFS layers, validated"
        )
        lines.append(f"#   {mt}: {what}")
    for note in p.notes:
        lines.append("#")
        lines.extend(_wrap(note))
    lines.append("#")
    lines.append(f"# Check the merged file with: {PROG} config --check /etc/containerd/config.toml")
    differ = f" --differ {p.differ}" if p.differ != STOCK else ""
    lines.append(f"#   --containerd-version {p.version}{differ}")
    lines.append(f"version = {p.config_version}")
    lines.append("")
    lines.append("[stream_processors]")
    lines.append(f"  [stream_processors.{toml_string(PROCESSOR_ID)}]")
    lines.append(f"    accepts = {_toml_list(options.routes)}")
    lines.append(f"    returns = {toml_string(mediatypes.OCI_LAYER_TAR)}")
    lines.append(f"    path = {toml_string(exe.path)}")
    lines.append(f"    args = {_toml_list([*exe.args, *options.extra_args])}")
    lines.append(f"    env = {_toml_list(env)}")
    if p.erofs_plugins:
        lines.extend(_erofs_plugin_lines(options.platform))
    return "\n".join(lines) + "\n"


def erofs_platform(platform_name: str) -> str:
    """``linux/amd64`` -> ``linux(+erofs)/amd64``, the platform containerd 2.3 unpacks
    images marked with the OS feature ``erofs`` for."""
    os_name, _, rest = platform_name.partition("/")
    base = os_name.split("(", 1)[0]
    return f"{base}{EROFS_FEATURE_SUFFIX}/{rest}"


def unpack_entry(platform_name: str) -> list[str]:
    return [
        f"    [[plugins.{toml_string(TRANSFER)}.unpack_config]]",
        f"      platform = {toml_string(platform_name)}",
        '      snapshotter = "erofs"',
        '      differ = "erofs"',
    ]


def _erofs_plugin_lines(platform_name: str) -> list[str]:
    return [
        "",
        "[plugins]",
        "  # Kubernetes (CRI) pulls unpack into the erofs snapshotter.",
        f"  [plugins.{toml_string(CRI_IMAGES)}]",
        '    snapshotter = "erofs"',
        "",
        "  # The erofs differ turns each layer into an EROFS blob; it needs the erofs",
        "  # snapshotter and erofs-utils >= 1.7 (mkfs.erofs --tar) for ordinary tar layers.",
        f"  [plugins.{toml_string(EROFS_DIFFER)}]",
        "",
        f"  [plugins.{toml_string(EROFS_SNAPSHOTTER)}]",
        "",
        "  # Client-side unpacking (ctr images pull --local, Go clients) tries differs in order.",
        f"  [plugins.{toml_string(DIFF_SERVICE)}]",
        '    default = ["erofs", "walking"]',
        "",
        "  # Transfer-service pulls (ctr images pull, CRI) unpack with these pairs. Setting",
        "  # unpack_config replaces containerd's two defaults, so both platforms are listed:",
        "  # images without OS features (convert's default) and ones marked +erofs",
        "  # (ctr images convert --erofs, convert --os-feature erofs). The erofs snapshotter",
        "  # can rebase, so layers unpack in parallel up to max_concurrent_unpacks.",
        f"  [plugins.{toml_string(TRANSFER)}]",
        f"    max_concurrent_unpacks = {MAX_CONCURRENT_UNPACKS}",
        *unpack_entry(platform_name),
        *unpack_entry(erofs_platform(platform_name)),
    ]


def shipped_snippets() -> dict[str, SnippetOptions]:
    """The files under ``config/``: name -> the options that generate them.

    The tests regenerate each file from this table and compare, so the shipped
    snippets cannot drift from what ``config`` prints.
    """
    exe = Executable(DEFAULT_EXECUTABLE)
    stock, patched, old = profile_for(LATEST), profile_for(LATEST, PR12506), profile_for("1.6")
    return {
        f"containerd-{LATEST}-erofs.toml": SnippetOptions(stock, exe, stock.default_routes()),
        f"containerd-{LATEST}-pr12506.toml": SnippetOptions(patched, exe, patched.default_routes()),
        "containerd-1.6-tar-zstd.toml": SnippetOptions(old, exe, old.default_routes()),
    }


def shipped_check_args(name: str) -> list[str]:
    """The ``config --check`` options that match shipped snippet ``name``."""
    profile = shipped_snippets()[name].profile
    args = ["--containerd-version", profile.version]
    if profile.differ != STOCK:
        args += ["--differ", profile.differ]
    return args


# ---------------------------------------------------------------- checking


PROBLEM = "problem"
WARNING = "warning"
OK = "ok"


@dataclass(frozen=True)
class Finding:
    level: str  # PROBLEM, WARNING or OK
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class CheckReport:
    """Findings about one config file; a non-empty ``problems`` means it does not work."""

    source: str
    profile: Profile
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, message: str) -> None:
        self.findings.append(Finding(level, message))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level == PROBLEM]

    def render(self) -> str:
        lines = [f"checking {self.source} for {self.profile.label}"]
        lines.extend(str(f) for f in self.findings)
        n = len(self.problems)
        lines.append("no problems found" if n == 0 else f"{n} problem{'s' if n > 1 else ''} found")
        return "\n".join(lines) + "\n"


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a config.toml; errors name the file and say what is wrong in it.

    A missing file is a usage error with the words every command uses for a
    missing input ("PATH: no such file or directory", exit 2).
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise no_such_file(name) from None
    except IsADirectoryError:
        raise UsageError(f"not a file: {name}") from None
    except OSError as exc:
        raise InputOutputError.from_os_error(f"cannot read {name}", exc) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not valid TOML: not UTF-8 text ({exc.reason})") from exc
    return parse_config(text, name)


def parse_config(text: str, source: str) -> dict[str, Any]:
    """Parse config.toml text; the error names ``source`` and tomllib's line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{source} is not valid TOML: {exc}") from exc


def config_versions(profile: Profile) -> tuple[int, ...]:
    """Config file versions ``profile``'s containerd reads as they are.

    containerd 2.3 writes version 4 (``containerd config default``, seen on
    2.3.4) and still reads version 3; 2.0-2.2 read 3, 1.x reads 2.
    """
    if profile.erofs_plugins:  # 2.3 and later
        return (3, 4)
    return (profile.config_version,)


def is_ours(pid: str, entry: Mapping[str, Any]) -> bool:
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
        report.add(PROBLEM, "no stream processor is registered: [stream_processors] is missing")
        return report
    ours = {pid: e for pid, e in processors.items() if isinstance(e, dict) and is_ours(pid, e)}
    if not ours:
        report.add(
            PROBLEM,
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
    accepted = config_versions(profile)
    if profile.config_version == 3 and found not in accepted:
        report.add(
            PROBLEM,
            f"config version is {found}, but {profile.label} reads version "
            f"{' or '.join(map(str, accepted))} plugin names; run `containerd config migrate` "
            "(or check with --containerd-version for a 1.x node)",
        )
    elif profile.config_version == 2 and found != 2:
        report.add(PROBLEM, f"config version is {found}; {profile.label} expects version = 2")


def _check_entry(
    pid: str, entry: Mapping[str, Any], profile: Profile, report: CheckReport, check_path: bool
) -> set[str]:
    name = f"stream processor {pid!r}"
    report.add(OK, f"{name} is registered")
    returns = entry.get("returns")
    if returns != mediatypes.OCI_LAYER_TAR:
        report.add(
            PROBLEM,
            f"{name}: returns is {returns!r}; it must be {mediatypes.OCI_LAYER_TAR!r}, "
            "the media type that ends containerd's processor chain",
        )
    else:
        report.add(OK, f"{name}: returns ends the processor chain")
    accepts = entry.get("accepts")
    good: set[str] = set()
    if not isinstance(accepts, list) or not accepts:
        report.add(PROBLEM, f"{name}: accepts is missing or empty; no layer will reach it")
        accepts = []
    for mt in accepts:
        if not isinstance(mt, str):
            report.add(PROBLEM, f"{name}: accepts holds {mt!r}, which is not a string")
            continue
        if "*" in mt:
            report.add(
                PROBLEM, f"{name}: containerd matches media types exactly; {mt!r} matches nothing"
            )
            continue
        try:
            mediatypes.resolve(mt)
        except UsageError:
            report.add(PROBLEM, f"{name}: accepts {mt!r}, which {PROG} refuses to decode")
            continue
        reason = unreachable_reason(mt, profile)
        if reason:
            report.add(WARNING, f"{name}: accepts {mt!r}, but {reason}")
        good.add(mt)
    for key in ("args", "env"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            report.add(PROBLEM, f"{name}: {key} must be a list of strings")
    env = [v for v in _as_list(entry.get("env")) if isinstance(v, str)]
    for item in env:
        if "=" not in item:
            report.add(PROBLEM, f"{name}: env entry {item!r} is not KEY=VALUE")
    if check_path:
        _check_executable(name, entry.get("path"), report)
    _check_log_file(name, env, profile, report)
    return good


def _check_executable(name: str, path: Any, report: CheckReport) -> None:
    if not isinstance(path, str) or not path:
        report.add(PROBLEM, f"{name}: path is missing")
        return
    if not os.path.isabs(path):
        report.add(
            PROBLEM,
            f"{name}: path {path!r} is not absolute; containerd would look it up in its own "
            "PATH, which is not a shell's",
        )
        return
    if not os.path.exists(path):
        report.add(PROBLEM, f"{name}: path {path} does not exist")
    elif not os.path.isfile(path):
        report.add(PROBLEM, f"{name}: path {path} is not a file")
    elif not os.access(path, os.X_OK):
        report.add(PROBLEM, f"{name}: path {path} is not executable")
    else:
        report.add(OK, f"{name}: path {path} exists and is executable")


def _check_log_file(name: str, env: Sequence[str], profile: Profile, report: CheckReport) -> None:
    values = dict(item.split("=", 1) for item in env if "=" in item)
    target = values.get(log.ENV_FILE)
    if not target:
        if profile.erofs_plugins:
            report.add(
                WARNING,
                f"{name}: no {log.ENV_FILE} in env; {profile.label}'s erofs differ discards "
                "the processor's stderr, so a failure leaves only 'wrong diff id'",
            )
        return
    directory = os.path.dirname(target) or "."
    if not os.path.isabs(target):
        report.add(PROBLEM, f"{name}: {log.ENV_FILE}={target} is not an absolute path")
    elif not os.path.isdir(directory):
        report.add(PROBLEM, f"{name}: the log file's directory {directory} does not exist")
    else:
        report.add(OK, f"{name}: failures are logged to {target}")


def _check_overlaps(processors: Mapping[str, Any], report: CheckReport) -> None:
    owners: dict[str, list[str]] = {}
    for pid, entry in processors.items():
        if isinstance(entry, dict):
            for mt in _as_list(entry.get("accepts")):
                owners.setdefault(str(mt), []).append(pid)
    for mt, pids in sorted(owners.items()):
        if len(pids) > 1:
            report.add(
                PROBLEM,
                f"{mt} is accepted by {len(pids)} processors ({', '.join(sorted(pids))}); "
                "containerd uses whichever it finds first",
            )


def _check_routes_reached(accepted: set[str], profile: Profile, report: CheckReport) -> None:
    if profile.zstd_route is None:
        report.add(
            WARNING,
            f"{profile.label} sends no EROFS layer to a stream processor; "
            "this registration only sees ordinary tar layers",
        )
        return
    if profile.zstd_route in accepted:
        report.add(OK, f"zstd EROFS layers reach the processor as {profile.zstd_route}")
    else:
        hint = (
            f" (if this node's differ is patched as in PR 12506, check with --differ {PR12506})"
            if profile.differ == STOCK
            else ""
        )
        report.add(
            PROBLEM,
            f"{profile.label} sends zstd EROFS layers as {profile.zstd_route}, which no "
            f"{PROG} entry accepts{hint}",
        )
    if profile.gzip_route is not None and profile.gzip_route not in accepted:
        report.add(
            WARNING, f"gzip EROFS layers ({profile.gzip_route}) are not routed to the processor"
        )


def _table(config: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    node: Any = config
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _check_erofs_plugins(config: Mapping[str, Any], report: CheckReport) -> None:
    disabled = [str(p) for p in _as_list(config.get("disabled_plugins"))]
    for plugin in (EROFS_SNAPSHOTTER, EROFS_DIFFER, DIFF_SERVICE, TRANSFER):
        if plugin in disabled:
            report.add(PROBLEM, f"{plugin} is in disabled_plugins")
    plugins = _table(config, "plugins")
    default = _as_list(_table(plugins, DIFF_SERVICE).get("default"))
    if "erofs" not in default:
        report.add(
            PROBLEM,
            f'[plugins."{DIFF_SERVICE}"] default does not list "erofs" (containerd\'s default '
            'is ["walking"]); client-side unpacking will not use the erofs differ',
        )
    elif "walking" in default and default.index("walking") < default.index("erofs"):
        report.add(PROBLEM, f'[plugins."{DIFF_SERVICE}"] default lists "walking" before "erofs"')
    else:
        report.add(OK, f"the diff service tries the erofs differ first ({default})")
    _check_unpack_config(_table(plugins, TRANSFER), report)
    _check_dmverity(_table(plugins, EROFS_DIFFER), report)
    cri = _table(plugins, CRI_IMAGES).get("snapshotter")
    if cri != "erofs":
        report.add(
            PROBLEM,
            f'[plugins."{CRI_IMAGES}"] snapshotter is {cri or "unset (overlayfs)"!s}; '
            'Kubernetes pulls will not use EROFS (set snapshotter = "erofs")',
        )
    else:
        report.add(OK, "CRI pulls use the erofs snapshotter")


def _check_dmverity(differ: Mapping[str, Any], report: CheckReport) -> None:
    """The 2.3 erofs differ's ``enable_dmverity`` needs the kernel's dm-verity: without it
    the differ fails to load (docs/containerd.md, "The erofs differ's own dm-verity")."""
    if differ.get("enable_dmverity") is True and not DM_VERITY_MODULE.exists():
        report.add(
            WARNING,
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
    ``linux/ARCH`` drops every +erofs image (docs/containerd.md).
    """
    unpack = [u for u in _as_list(transfer.get("unpack_config")) if isinstance(u, dict)]
    erofs_unpack = [u for u in unpack if u.get("snapshotter") == "erofs"]
    wrong_differ = [u for u in erofs_unpack if u.get("differ", "erofs") not in ("erofs", "")]
    if not erofs_unpack:
        report.add(
            PROBLEM,
            f'[plugins."{TRANSFER}"] has no unpack_config with snapshotter = "erofs"; '
            "transfer-service pulls unpack into overlayfs and never reach the erofs differ",
        )
        return
    if wrong_differ:
        report.add(
            PROBLEM,
            f'[plugins."{TRANSFER}"] unpack_config pairs the erofs snapshotter with differ '
            f'{wrong_differ[0].get("differ")!r}; use "erofs"',
        )
        return
    platforms_ = [str(u.get("platform", "")) for u in erofs_unpack]
    featured = [p for p in platforms_ if EROFS_FEATURE_SUFFIX in p]
    plain = [p for p in platforms_ if p and EROFS_FEATURE_SUFFIX not in p]
    if not featured:
        report.add(
            PROBLEM,
            f'[plugins."{TRANSFER}"] unpack_config has no linux(+erofs)/ARCH platform '
            f"(only {', '.join(platforms_) or 'none'}); it replaces containerd's defaults, so "
            "images marked with the OS feature erofs (ctr images convert --erofs, convert "
            "--os-feature erofs) are pulled without unpacking any layer",
        )
    if not plain:
        report.add(
            PROBLEM,
            f'[plugins."{TRANSFER}"] unpack_config has no plain linux/ARCH platform with the '
            "erofs snapshotter; images without OS features (convert's default, every "
            "ordinary image) are not unpacked into erofs",
        )
    if featured and plain:
        report.add(
            OK,
            "transfer-service pulls unpack with the erofs snapshotter and differ "
            f"({', '.join(platforms_)})",
        )
    limit = transfer.get("max_concurrent_unpacks", 1)
    if not isinstance(limit, int) or limit < 2:
        report.add(
            WARNING,
            f'[plugins."{TRANSFER}"] max_concurrent_unpacks is {limit!r}: layers unpack one '
            f"after another (the erofs snapshotter can rebase; {MAX_CONCURRENT_UNPACKS} "
            "measured faster, docs/containerd.md)",
        )
