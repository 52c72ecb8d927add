"""The media types to register: what ``--routes`` names, refused if containerd never sends it.

A route the chosen containerd never sends is an error, not a warning: a
registration that is never used is the silent failure ``config`` exists to
prevent.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream_processor import mediatypes
from stream_processor.containerd.versions import GZIP_REJECTED, PR12506, Profile
from stream_processor.errors import UsageError


def is_pattern(media_type: str) -> bool:
    """containerd matches ``accepts`` by exact string: an entry with ``*`` matches nothing."""
    return "*" in media_type


def resolve_routes(names: Sequence[str] | None, profile: Profile) -> tuple[str, ...]:
    """Turn ``--routes`` entries into media types, refusing ones the version never sends."""
    if not names:
        return profile.default_routes()
    routes: list[str] = []
    for name in names:
        if is_pattern(name):
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
