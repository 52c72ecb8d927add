"""``containerd.routes``: which media types to register, and the ones containerd never sends."""

from __future__ import annotations

import pytest

from stream_processor import PROG, mediatypes
from stream_processor.containerd import routes, versions
from stream_processor.errors import UsageError

TAR_ZSTD = mediatypes.OCI_LAYER_TAR_ZSTD
EROFS_ZSTD = mediatypes.EROFS_LAYER_ZSTD
EROFS_GZIP = mediatypes.EROFS_LAYER_GZIP


@pytest.mark.parametrize(
    ("names", "differ", "expected"),
    [
        (None, versions.STOCK, (TAR_ZSTD,)),
        (["tar+zstd", "tar+gzip"], versions.STOCK, (TAR_ZSTD, mediatypes.OCI_LAYER_TAR_GZIP)),
        (None, versions.PR12506, (EROFS_ZSTD, EROFS_GZIP)),
        (
            ["erofs+zstd", "application/vnd.example.rootfs.erofs+zstd"],
            versions.PR12506,
            (EROFS_ZSTD, "application/vnd.example.rootfs.erofs+zstd"),
        ),
    ],
)
def test_routes_resolve(names: list[str] | None, differ: str, expected: tuple[str, ...]) -> None:
    assert routes.resolve_routes(names, versions.profile_for("2.3", differ)) == expected


@pytest.mark.parametrize(
    ("names", "version", "words"),
    [
        (["erofs+gzip"], "2.3", "unsupported erofs layer suffix: gzip"),
        (["erofs+zstd"], "2.3", f"sends zstd EROFS layers as {TAR_ZSTD}"),
        (["erofs+zstd"], "1.6", "never sends"),
        (["*.erofs+zstd"], "2.3", "would match nothing"),
        (["application/vnd.example.unknown"], "2.3", "unsupported media type"),
        ([mediatypes.EROFS_LAYER], "2.3", "copies an uncompressed EROFS layer"),
    ],
)
def test_routes_never_sent_are_refused(names: list[str], version: str, words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("+", r"\+").replace("*", r"\*")):
        routes.resolve_routes(names, versions.profile_for(version))


def test_gzip_refusal_says_what_to_do_instead() -> None:
    with pytest.raises(UsageError) as info:
        routes.resolve_routes(["erofs+gzip"], versions.profile_for("2.3"))
    assert f"{PROG} pack" in info.value.message
    assert f"--differ {versions.PR12506}" in info.value.message


@pytest.mark.parametrize(
    ("media_type", "pattern"),
    [("*.erofs+zstd", True), ("application/vnd.oci.image.layer.v1.*", True), (TAR_ZSTD, False)],
)
def test_is_pattern(media_type: str, pattern: bool) -> None:
    assert routes.is_pattern(media_type) is pattern


@pytest.mark.parametrize(
    ("media_type", "version", "differ", "reachable"),
    [
        (TAR_ZSTD, "1.6", versions.STOCK, True),  # ordinary tar arrives everywhere
        (mediatypes.OCI_LAYER_TAR_GZIP, "2.3", versions.STOCK, True),
        (EROFS_ZSTD, "2.2", versions.STOCK, False),
        (EROFS_ZSTD, "2.3", versions.STOCK, False),  # arrives, but as tar+zstd
        (EROFS_GZIP, "2.3", versions.STOCK, False),
        (EROFS_ZSTD, "2.3", versions.PR12506, True),
        (EROFS_GZIP, "2.3", versions.PR12506, True),
        (mediatypes.EROFS_LAYER, "2.3", versions.PR12506, False),  # copied, no processor
    ],
)
def test_unreachable_reason(media_type: str, version: str, differ: str, reachable: bool) -> None:
    reason = routes.unreachable_reason(media_type, versions.profile_for(version, differ))
    assert (reason is None) is reachable, reason
