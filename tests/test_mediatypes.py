"""Media type routing: which payload each type promises and which compression it declares."""

from __future__ import annotations

import pytest

from stream_processor import mediatypes as mt
from stream_processor.errors import UsageError
from stream_processor.mediatypes import Compression, Payload


def test_media_type_names_are_the_registered_strings() -> None:
    """The other tests use these constants instead of retyping the strings; this pins
    them to what containerd, the OCI spec and images in the field spell out."""
    assert mt.EROFS_LAYER == "application/vnd.erofs.layer.v1"
    assert mt.EROFS_LAYER_ZSTD == "application/vnd.erofs.layer.v1+zstd"
    assert mt.EROFS_LAYER_GZIP == "application/vnd.erofs.layer.v1+gzip"
    assert mt.OCI_LAYER_TAR == "application/vnd.oci.image.layer.v1.tar"
    assert mt.OCI_LAYER_TAR_ZSTD == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert mt.OCI_LAYER_TAR_GZIP == "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.mark.parametrize(
    ("media_type", "compression", "payload"),
    [
        (mt.EROFS_LAYER_ZSTD, Compression.ZSTD, Payload.EROFS),
        (mt.EROFS_LAYER_GZIP, Compression.GZIP, Payload.EROFS),
        ("application/vnd.oci.image.layer.v1.erofs+zstd", Compression.ZSTD, Payload.EROFS),
        ("application/vnd.example.erofs+gzip", Compression.GZIP, Payload.EROFS),
        (mt.EROFS_LAYER, Compression.NONE, Payload.EROFS),
        (mt.OCI_LAYER_EROFS, Compression.NONE, Payload.EROFS),
        (mt.OCI_LAYER_TAR_ZSTD, Compression.ZSTD, Payload.EROFS_OR_TAR),
        (mt.OCI_LAYER_TAR_GZIP, Compression.GZIP, Payload.EROFS_OR_TAR),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression.GZIP,
            Payload.EROFS_OR_TAR,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.zstd",
            Compression.ZSTD,
            Payload.EROFS_OR_TAR,
        ),
    ],
)
def test_known_media_types_route(
    media_type: str, compression: Compression, payload: Payload
) -> None:
    route = mt.resolve(media_type)
    assert (route.compression, route.payload) == (compression, payload)


def test_no_media_type_means_detect_and_expect_erofs() -> None:
    route = mt.resolve(None)
    assert route.compression is None and route.payload is Payload.EROFS
    assert mt.resolve("").compression is None


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.oci.image.layer.v1.tar", "application/vnd.erofs.layer.v1+lz4", "text/plain"],
)
def test_unknown_media_types_are_usage_errors_listing_supported(media_type: str) -> None:
    with pytest.raises(UsageError) as err:
        mt.resolve(media_type)
    assert media_type in err.value.message
    assert mt.EROFS_LAYER_ZSTD in err.value.message and mt.OCI_LAYER_TAR_ZSTD in err.value.message


def test_producer_media_types() -> None:
    assert mt.erofs_media_type(Compression.ZSTD) == mt.EROFS_LAYER_ZSTD
    assert mt.erofs_media_type(Compression.NONE) == mt.EROFS_LAYER


# -- issue 13: one vocabulary (short names) for decode, inspect and config -----------------


@pytest.mark.parametrize(("name", "full"), list(mt.SHORT_NAMES.items()))
def test_short_names_resolve_to_their_media_types(name: str, full: str) -> None:
    assert mt.resolve_name(name) == full
    assert mt.resolve_name(f" {name} ") == full
    assert mt.resolve_name(full) == full  # a full media type is its own name
    assert mt.resolve(full).media_type == full


def test_every_listed_name_is_accepted_and_the_listing_has_no_patterns() -> None:
    for name in mt.names():
        mt.resolve_name(name)
    listing = mt.describe_supported()
    assert "*" not in listing
    for name in mt.names():
        assert name in listing
    assert mt.resolve_name("application/vnd.example.layer.erofs+zstd").endswith(".erofs+zstd")


def test_unknown_name_lists_the_short_names() -> None:
    with pytest.raises(UsageError) as err:
        mt.resolve_name("tar+lz4")
    assert err.value.message == (
        f"unsupported media type 'tar+lz4'; supported: {mt.describe_supported()}"
    )
    assert "tar+zstd, tar+gzip, erofs+zstd, erofs+gzip, erofs (short names)" in err.value.message


def test_containerd_exact_strings_are_not_short_names() -> None:
    """containerd sends full media types and matches ``accepts`` exactly: ``resolve``
    (what a config's accepts list is checked with) does not take short names."""
    with pytest.raises(UsageError):
        mt.resolve("tar+zstd")


def test_named_values_behave_like_enum_members() -> None:
    """``Compression``/``Payload`` replace ``Enum`` on the decode path (start-up): lookup by
    value, listing, and identity across pickling (``convert`` sends them to workers)."""
    import pickle

    from stream_processor.mediatypes import Compression, Payload

    assert Compression.of("gzip") is Compression.GZIP
    assert [c.value for c in Compression.all()] == ["zstd", "gzip", "none"]
    assert Payload.all() == (Payload.EROFS, Payload.EROFS_OR_TAR)
    for member in (*Compression.all(), *Payload.all()):
        assert pickle.loads(pickle.dumps(member)) is member
    with pytest.raises(ValueError, match="'brotli' is not a valid Compression"):
        Compression.of("brotli")
    with pytest.raises(ValueError):
        Compression.of("erofs")  # a Payload's value is not a Compression
