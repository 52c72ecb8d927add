"""``containerd.versions``: the (release range, differ) -> routing table and its lookup.

The facts are docs/containerd.md section 1; the real-daemon tests are their evidence.
"""

from __future__ import annotations

import pytest

from stream_processor import mediatypes
from stream_processor.containerd import versions
from stream_processor.errors import UsageError

TAR_ZSTD = mediatypes.OCI_LAYER_TAR_ZSTD
EROFS_ZSTD = mediatypes.EROFS_LAYER_ZSTD
EROFS_GZIP = mediatypes.EROFS_LAYER_GZIP


def test_profile_23_routes_zstd_erofs_as_tar_zstd_and_rejects_gzip() -> None:
    p = versions.profile_for("2.3")
    assert (p.zstd_route, p.gzip_route, p.config_version) == (TAR_ZSTD, None, 3)
    assert p.erofs_plugins


def test_profile_pr12506_routes_erofs_media_types_under_their_own_names() -> None:
    p = versions.profile_for("2.3", versions.PR12506)
    assert (p.zstd_route, p.gzip_route) == (EROFS_ZSTD, EROFS_GZIP)


@pytest.mark.parametrize(("version", "config_version"), [("1.6", 2), ("1.7", 2), ("2.2", 3)])
def test_profile_before_23_sends_no_erofs_to_processors(version: str, config_version: int) -> None:
    p = versions.profile_for(version)
    assert (p.zstd_route, p.gzip_route, p.erofs_plugins) == (None, None, False)
    assert p.config_version == config_version
    assert p.default_routes() == (TAR_ZSTD,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.3.4", "2.3"), ("v1.6.20", "1.6"), ("1.6.20~ds1", "1.6"), ("2", "2.0")],
)
def test_version_strings_normalize(text: str, expected: str) -> None:
    assert versions.normalize_version(text) == expected
    assert versions.profile_for(text).version == expected


def test_default_version_is_latest_known() -> None:
    assert versions.profile_for().version == versions.LATEST == "2.3"


def test_newer_version_assumes_latest_and_says_so() -> None:
    p = versions.profile_for("2.4")
    assert p.zstd_route == TAR_ZSTD
    assert any("not observed" in n for n in p.notes)


@pytest.mark.parametrize(
    ("version", "differ", "words"),
    [
        ("1.5", versions.STOCK, "not supported"),
        ("banana", versions.STOCK, "not a containerd version"),
        ("1.6", versions.PR12506, "PR 12506"),
        ("2.3", "walking", "unknown differ"),
    ],
)
def test_profile_refuses_unknown_or_impossible(version: str, differ: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        versions.profile_for(version, differ)


# ------------------------------------------------------------------ the table itself


def _releases() -> list[tuple[int, int]]:
    """Every major.minor from 1.0 to 3.9: enough to cross each row's edges."""
    return [(major, minor) for major in (1, 2, 3) for minor in range(10)]


@pytest.mark.parametrize("differ", versions.DIFFERS)
def test_at_most_one_row_per_release_and_differ(differ: str) -> None:
    for release in _releases():
        rows = [r for r in versions.TABLE if r.differ == differ and r.covers(release)]
        assert len(rows) <= 1, (release, differ, rows)


def test_stock_rows_cover_every_release_from_16_without_gaps() -> None:
    covered = [
        release
        for release in _releases()
        if any(r.differ == versions.STOCK and r.covers(release) for r in versions.TABLE)
    ]
    assert covered == [release for release in _releases() if release >= (1, 6)]


def test_every_observed_release_is_in_the_table_and_the_last_row_is_open() -> None:
    for known in versions.KNOWN_VERSIONS:
        major, minor = map(int, known.split("."))
        assert any(r.covers((major, minor)) for r in versions.TABLE), known
    latest = tuple(map(int, versions.LATEST.split(".")))
    assert all(r.until is None for r in versions.TABLE if r.covers((latest[0], latest[1])))


def test_a_pr12506_differ_exists_only_from_23() -> None:
    patched = [r for r in versions.TABLE if r.differ == versions.PR12506]
    assert patched and all(r.since >= (2, 3) for r in patched)


@pytest.mark.parametrize(
    ("version", "erofs_plugins", "config_versions"),
    [
        ("1.9", False, (2,)),  # the 1.x row runs up to 2.0
        ("2.0", False, (3,)),
        ("2.2", False, (3,)),
        ("2.3", True, (3, 4)),  # 2.3.4's `containerd config default` writes version 4
        ("3.1", True, (3, 4)),
    ],
)
def test_row_edges(version: str, erofs_plugins: bool, config_versions: tuple[int, ...]) -> None:
    p = versions.profile_for(version)
    assert (p.erofs_plugins, p.config_versions) == (erofs_plugins, config_versions)
    assert p.config_version == config_versions[0]


@pytest.mark.parametrize(("version", "differ"), [("2.3", "stock"), ("2.3", "pr12506")])
def test_profile_title_names_the_release(version: str, differ: str) -> None:
    p = versions.profile_for("2.3.4", differ)
    assert p.title.startswith(f"containerd {version} ") and "{" not in p.title
    assert not any("not observed" in n for n in p.notes)


def test_label_says_which_differ() -> None:
    assert versions.profile_for("2.3").label == "containerd 2.3"
    assert versions.profile_for("2.3", versions.PR12506).label == (
        "containerd 2.3 with a PR 12506 differ"
    )
