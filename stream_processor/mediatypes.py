"""Media types this processor accepts, and what each one means for the payload.

Like containerd's ``core/diff/stream.go``: a plain table, matched by exact
string, plus one rule for the ``*.erofs+zstd|gzip`` family of containerd PR
12506. See docs/containerd.md section 1 for why the tar routes are here at all:
containerd 2.3 sends zstd-wrapped EROFS down the ordinary ``tar+zstd`` route.

It is also the one vocabulary of the command line: the short names
(``tar+zstd``...) that ``decode``, ``inspect`` and ``config --routes`` accept,
and the one "supported" listing they print. Imported on every decode, so it
imports nothing but ``errors`` (see ``Named``).
"""

from __future__ import annotations

from stream_processor.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the decode path
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import ClassVar, Self

ENV_MEDIA_TYPE = "STREAM_PROCESSOR_MEDIATYPE"

EROFS_LAYER = "application/vnd.erofs.layer.v1"
EROFS_LAYER_ZSTD = EROFS_LAYER + "+zstd"
EROFS_LAYER_GZIP = EROFS_LAYER + "+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_ZSTD = OCI_LAYER_TAR + "+zstd"
OCI_LAYER_TAR_GZIP = OCI_LAYER_TAR + "+gzip"
OCI_LAYER_EROFS = "application/vnd.oci.image.layer.v1.erofs"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_TAR_GZIP = DOCKER_LAYER_TAR + ".gzip"
DOCKER_LAYER_TAR_ZSTD = DOCKER_LAYER_TAR + ".zstd"


class Named:
    """A fixed set of named values, compared with ``is``, as ``enum.Enum`` members are.

    Not ``Enum`` itself: the decode path is started once per layer, and ``enum`` (with
    the ``functools`` and ``collections`` it loads) was a measurable part of that start
    (README "Performance"). A subclass declares its members as ``ClassVar`` names and
    creates them with ``_define``; ``of`` finds one by value and ``all`` lists them.
    """

    __slots__ = ("value",)
    _members: ClassVar[dict[str, Named]]

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.value}>"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        """Unpickled (in ``convert``'s worker processes) as the same member, so ``is`` holds."""
        return type(self).of, (self.value,)

    @classmethod
    def _define(cls, *values: str) -> Iterator[Self]:
        """The members, in order; call once per subclass."""
        cls._members = {}
        for value in values:
            member = cls(value)
            cls._members[value] = member
            yield member

    @classmethod
    def of(cls, value: str) -> Self:
        """The member with this value (``ValueError`` for none), as ``Enum(value)``."""
        member = cls._members.get(value)
        if not isinstance(member, cls):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}")
        return member

    @classmethod
    def all(cls) -> tuple[Self, ...]:
        """Every member, in the order defined."""
        return tuple(m for m in cls._members.values() if isinstance(m, cls))


class Compression(Named):
    """How the payload is wrapped on the wire."""

    __slots__ = ()
    ZSTD: ClassVar[Compression]
    GZIP: ClassVar[Compression]
    NONE: ClassVar[Compression]


Compression.ZSTD, Compression.GZIP, Compression.NONE = Compression._define("zstd", "gzip", "none")


class Payload(Named):
    """What the decompressed stream may be: ``EROFS`` must be a valid EROFS image;
    ``EROFS_OR_TAR`` (the shared tar route) is EROFS (validated) or tar (passed through)."""

    __slots__ = ()
    EROFS: ClassVar[Payload]
    EROFS_OR_TAR: ClassVar[Payload]


Payload.EROFS, Payload.EROFS_OR_TAR = Payload._define("erofs", "erofs-or-tar")


class Route:
    """The decision for one media type. ``compression is None`` means: detect it."""

    __slots__ = ("compression", "media_type", "payload")

    def __init__(
        self, media_type: str | None, compression: Compression | None, payload: Payload
    ) -> None:
        self.media_type = media_type
        self.compression = compression
        self.payload = payload

    def __repr__(self) -> str:
        return f"Route({self.media_type!r}, {self.compression!r}, {self.payload!r})"


# The shared route: ordinary tar layers arrive here too, and must pass untouched.
_SHARED: dict[str, Compression] = {
    OCI_LAYER_TAR_ZSTD: Compression.ZSTD,
    OCI_LAYER_TAR_GZIP: Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    DOCKER_LAYER_TAR_GZIP: Compression.GZIP,
    DOCKER_LAYER_TAR_ZSTD: Compression.ZSTD,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}

_SUFFIXES: dict[str, Compression] = {"+zstd": Compression.ZSTD, "+gzip": Compression.GZIP}

# Uncompressed tar layers: containerd never sends them to a stream processor, but
# ``convert`` reads them (``tar_compression``).
_PLAIN_TAR: tuple[str, ...] = (
    OCI_LAYER_TAR,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    DOCKER_LAYER_TAR,
)

# Short names, one vocabulary for every command: ``decode``/``inspect --media-type`` and
# ``config --routes`` accept these or a full media type, and every "supported" listing
# prints ``describe_supported()``. containerd itself only ever sends full media types.
SHORT_NAMES: dict[str, str] = {
    "tar+zstd": OCI_LAYER_TAR_ZSTD,
    "tar+gzip": OCI_LAYER_TAR_GZIP,
    "erofs+zstd": EROFS_LAYER_ZSTD,
    "erofs+gzip": EROFS_LAYER_GZIP,
    "erofs": EROFS_LAYER,
}

# Full media types matched exactly (the PR 12506 family below is matched by suffix).
EXACT: tuple[str, ...] = (EROFS_LAYER_ZSTD, EROFS_LAYER_GZIP, EROFS_LAYER, *_SHARED)
FAMILY_SUFFIXES = (".erofs+zstd", ".erofs+gzip", ".erofs")


def names() -> tuple[str, ...]:
    """Every name a user may give exactly: the short names, then the full media types.
    (Any media type ending in one of ``FAMILY_SUFFIXES`` is accepted too.)"""
    return (*SHORT_NAMES, *EXACT)


def describe_supported() -> str:
    """The one "supported" listing, for every command's error and help text."""
    return (
        f"{', '.join(SHORT_NAMES)} (short names), {', '.join(EXACT)}, or any media type "
        f"ending in {', '.join(FAMILY_SUFFIXES[:-1])} or {FAMILY_SUFFIXES[-1]}"
    )


def _unsupported(name: str) -> UsageError:
    return UsageError(f"unsupported media type {name!r}; supported: {describe_supported()}")


def erofs_compression(mt: str) -> Compression | None:
    """How an EROFS layer of media type ``mt`` is wrapped, or None if ``mt`` names no EROFS
    layer: the EROFS types and the PR 12506 family, one rule for decode and ``convert``."""
    for suffix, compression in _SUFFIXES.items():
        base = mt[: -len(suffix)]
        if mt.endswith(suffix) and (base == EROFS_LAYER or base.endswith(".erofs")):
            return compression
    if mt.endswith(".erofs") or mt == EROFS_LAYER:
        return Compression.NONE
    return None


def tar_compression(mt: str) -> Compression | None:
    """How an OCI or Docker tar layer of media type ``mt`` is compressed, or None if ``mt``
    names no tar layer (``convert`` reads them all; the compressed ones are ``_SHARED``)."""
    if mt in _PLAIN_TAR:
        return Compression.NONE
    return _SHARED.get(mt)


def _route(mt: str) -> Route | None:
    if mt in _SHARED:
        return Route(mt, _SHARED[mt], Payload.EROFS_OR_TAR)
    compression = erofs_compression(mt)
    return Route(mt, compression, Payload.EROFS) if compression is not None else None


def resolve_name(name: str) -> str:
    """The full media type for ``name``: a short name (``tar+zstd``) or a supported media
    type (returned as is). Raises ``UsageError`` listing ``describe_supported()``."""
    mt = name.strip()
    mt = SHORT_NAMES.get(mt, mt)
    if _route(mt) is None:
        raise _unsupported(name.strip())
    return mt


def resolve(media_type: str | None) -> Route:
    """Map a media type exactly as containerd sends it (or ``None``: unknown, detect) to a
    route; short names are for command lines (``resolve_name``), not for this.

    Raises ``UsageError`` naming the supported types for anything else, so a
    misconfigured ``accepts`` list is caught on the first layer.
    """
    if not media_type:
        return Route(None, None, Payload.EROFS)
    mt = media_type.strip()
    route = _route(mt)
    if route is None:
        raise _unsupported(mt)
    return route


def erofs_media_type(compression: Compression) -> str:
    """The media type a producer should give an EROFS layer wrapped this way."""
    if compression is Compression.NONE:
        return EROFS_LAYER
    return f"{EROFS_LAYER}+{compression.value}"
