"""What each containerd release and differ does with EROFS layers, as one table.

The rows are docs/containerd.md section 1; the real-daemon tests
(test_containerd_daemon, test_containerd_2x, test_containerd_23) are their
evidence. A hand-written ``accepts`` list that guesses wrong is silently
never used, so the snippet generator and the checker both read these facts
from here rather than from free text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from stream_processor import PROG, mediatypes
from stream_processor.errors import UsageError

STOCK = "stock"
PR12506 = "pr12506"
DIFFERS = (STOCK, PR12506)

# The releases this tool knows; a later one is assumed to behave like LATEST.
KNOWN_VERSIONS = ("1.6", "1.7", "2.0", "2.1", "2.2", "2.3")
LATEST = KNOWN_VERSIONS[-1]

GZIP_REJECTED = (
    "stock containerd 2.3 rejects application/vnd.erofs.layer.v1+gzip in its erofs differ "
    '("unsupported erofs layer suffix: gzip") before any stream processor runs; re-pack the '
    f"layer as +zstd ({PROG} pack) or run a differ that routes +gzip (--differ {PR12506})"
)


@dataclass(frozen=True)
class Routing:
    """What a range of releases with one differ does; the table's values.

    ``zstd_route``/``gzip_route`` are the media types a processor must accept
    to be handed a zstd/gzip-wrapped EROFS layer; ``None`` means no processor
    ever sees one. ``title`` has a ``{version}`` placeholder.
    """

    config_version: int  # the config.toml version a snippet is written in
    reads: tuple[int, ...]  # the config.toml versions it reads as they are
    zstd_route: str | None
    gzip_route: str | None
    erofs_plugins: bool  # the node needs the erofs snapshotter + differ settings
    title: str
    notes: tuple[str, ...]


class Row(NamedTuple):
    since: tuple[int, int]
    until: tuple[int, int] | None  # exclusive; None: every later release
    differ: str
    routing: Routing

    def covers(self, release: tuple[int, int]) -> bool:
        return self.since <= release and (self.until is None or release < self.until)


_BEFORE_23_NOTES = (
    "No containerd before 2.3 hands an EROFS layer to a stream processor: its unpacker "
    "does not count application/vnd.erofs.layer.v1+zstd|gzip as layers (seen on 2.1.9: "
    '"mismatched image rootfs and manifest layers"), and the 2.0-2.2 erofs differ '
    'rejects them ("currently unsupported media type").',
    "This registration puts the processor on the ordinary tar+zstd route, where it passes "
    "tar layers through byte for byte (and validates an EROFS payload if one arrives). "
    "It is what the project's real-daemon tests run on Debian's containerd 1.6.20 and 2.1.9.",
)
_TAR_ONLY = "containerd {version}: ordinary tar+zstd layers only"

# (since, until) release range, differ -> what it does. Positional Routing fields:
# config_version, reads, zstd_route, gzip_route, erofs_plugins, title, notes.
TABLE: tuple[Row, ...] = (
    Row((1, 6), (2, 0), STOCK, Routing(2, (2,), None, None, False, _TAR_ONLY, _BEFORE_23_NOTES)),
    Row((2, 0), (2, 3), STOCK, Routing(3, (3,), None, None, False, _TAR_ONLY, _BEFORE_23_NOTES)),
    Row(
        (2, 3),
        None,
        STOCK,
        Routing(
            config_version=3,
            reads=(3, 4),  # 2.3.4's `containerd config default` writes 4
            zstd_route=mediatypes.OCI_LAYER_TAR_ZSTD,
            gzip_route=None,
            erofs_plugins=True,
            title="containerd {version} with the erofs snapshotter and erofs differ",
            notes=(
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
        ),
    ),
    Row(
        (2, 3),
        None,
        PR12506,
        Routing(
            config_version=3,
            reads=(3, 4),
            zstd_route=mediatypes.EROFS_LAYER_ZSTD,
            gzip_route=mediatypes.EROFS_LAYER_GZIP,
            erofs_plugins=True,
            title="containerd {version} with an erofs differ patched as in PR 12506",
            notes=(
                "A differ patched as in containerd PR 12506 sends any layer whose media type "
                "is application/vnd.erofs.layer.v1 or ends in .erofs, with +zstd or +gzip, down "
                "the processor chain under its own media type.",
                "containerd matches accepts by exact string: list every media type your images "
                "use (a pattern such as *.erofs+zstd matches nothing).",
            ),
        ),
    ),
)


@dataclass(frozen=True)
class Profile:
    """One containerd release (``major.minor``) with one differ, and its table row's facts."""

    version: str
    differ: str
    config_version: int
    config_versions: tuple[int, ...]  # Routing.reads
    zstd_route: str | None
    gzip_route: str | None
    erofs_plugins: bool
    title: str
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        suffix = " with a PR 12506 differ" if self.differ == PR12506 else ""
        return f"containerd {self.version}{suffix}"

    def default_routes(self) -> tuple[str, ...]:
        routes = tuple(r for r in (self.zstd_route, self.gzip_route) if r)
        return routes or (mediatypes.OCI_LAYER_TAR_ZSTD,)


def profile_for(version: str | None = None, differ: str = STOCK) -> Profile:
    """The profile for ``version`` ("2.3", "2.3.4", "v1.6.20"; default: the latest known).

    Raises ``UsageError`` for versions no row covers and for a PR 12506 differ
    on a version it was never built for.
    """
    wanted = normalize_version(version or LATEST)
    if differ not in DIFFERS:
        raise UsageError(f"unknown differ {differ!r}; use one of: {', '.join(DIFFERS)}")
    major, minor = (int(p) for p in wanted.split("."))
    rows = [row for row in TABLE if row.covers((major, minor))]
    if not rows:
        raise UsageError(
            f"containerd {wanted} is not supported; known versions: {', '.join(KNOWN_VERSIONS)}"
        )
    row = next((r for r in rows if r.differ == differ), None)
    if row is None:
        raise UsageError(
            f"the PR 12506 differ exists only as a patched containerd {LATEST}; "
            f"containerd {wanted} has no erofs differ that routes EROFS layers"
        )
    assumed = (
        (f"containerd {wanted} was not observed; this assumes it behaves like {LATEST}.",)
        if row.until is None and wanted not in KNOWN_VERSIONS
        else ()
    )
    r = row.routing
    return Profile(
        version=wanted,
        differ=differ,
        config_version=r.config_version,
        config_versions=r.reads,
        zstd_route=r.zstd_route,
        gzip_route=r.gzip_route,
        erofs_plugins=r.erofs_plugins,
        title=r.title.format(version=wanted),
        notes=(*assumed, *r.notes),
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
