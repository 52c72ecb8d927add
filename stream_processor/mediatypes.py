"""Media types this processor accepts, and what each one means for the payload.

Like containerd's ``core/diff/stream.go``: a plain table, matched by exact
string, plus one rule for the ``*.erofs+zstd|gzip`` family of containerd PR
12506. See docs/containerd.md section 1 for why the tar routes are here at all:
containerd 2.3 sends zstd-wrapped EROFS down the ordinary ``tar+zstd`` route.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from stream_processor.errors import UsageError

ENV_MEDIA_TYPE = "STREAM_PROCESSOR_MEDIATYPE"

EROFS_LAYER = "application/vnd.erofs.layer.v1"
EROFS_LAYER_ZSTD = EROFS_LAYER + "+zstd"
EROFS_LAYER_GZIP = EROFS_LAYER + "+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_ZSTD = OCI_LAYER_TAR + "+zstd"
OCI_LAYER_TAR_GZIP = OCI_LAYER_TAR + "+gzip"
OCI_LAYER_EROFS = "application/vnd.oci.image.layer.v1.erofs"


class Compression(Enum):
    """How the payload is wrapped on the wire."""

    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"


class Payload(Enum):
    """What the decompressed stream may be."""

    EROFS = "erofs"  # must be a valid EROFS image
    EROFS_OR_TAR = "erofs-or-tar"  # shared tar route: EROFS (validated) or tar (passed through)


class Route(NamedTuple):
    """The decision for one media type. ``compression is None`` means: detect it."""

    media_type: str | None
    compression: Compression | None
    payload: Payload


# The shared route: ordinary tar layers arrive here too, and must pass untouched.
_SHARED: dict[str, Compression] = {
    OCI_LAYER_TAR_ZSTD: Compression.ZSTD,
    OCI_LAYER_TAR_GZIP: Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}

_SUFFIXES: dict[str, Compression] = {"+zstd": Compression.ZSTD, "+gzip": Compression.GZIP}

SUPPORTED: tuple[str, ...] = (
    EROFS_LAYER_ZSTD,
    EROFS_LAYER_GZIP,
    EROFS_LAYER,
    "*.erofs+zstd",
    "*.erofs+gzip",
    "*.erofs",
    *_SHARED,
)


def resolve(media_type: str | None) -> Route:
    """Map a media type (or ``None``: unknown, detect) to a route.

    Raises ``UsageError`` naming the supported types for anything else, so a
    misconfigured ``accepts`` list is caught on the first layer.
    """
    if not media_type:
        return Route(None, None, Payload.EROFS)
    mt = media_type.strip()
    if mt in _SHARED:
        return Route(mt, _SHARED[mt], Payload.EROFS_OR_TAR)
    for suffix, compression in _SUFFIXES.items():
        base = mt[: -len(suffix)]
        if mt.endswith(suffix) and (base == EROFS_LAYER or base.endswith(".erofs")):
            return Route(mt, compression, Payload.EROFS)
    if mt.endswith(".erofs") or mt == EROFS_LAYER:
        return Route(mt, Compression.NONE, Payload.EROFS)
    raise UsageError(f"unsupported media type {mt!r}; supported: {', '.join(SUPPORTED)}")


def erofs_media_type(compression: Compression) -> str:
    """The media type a producer should give an EROFS layer wrapped this way."""
    if compression is Compression.NONE:
        return EROFS_LAYER
    return f"{EROFS_LAYER}+{compression.value}"
