"""``containerd.platforms``: the platform strings written into unpack_config."""

from __future__ import annotations

import pytest

from stream_processor.containerd import platforms
from stream_processor.errors import UsageError


def test_erofs_platform_spelling() -> None:
    """containerd's platforms.FormatAll spelling, which its unpack_config parser reads."""
    assert platforms.erofs_platform("linux/amd64") == "linux(+erofs)/amd64"
    assert platforms.erofs_platform("linux/arm64/v8") == "linux(+erofs)/arm64/v8"
    assert platforms.erofs_platform("linux(+erofs)/arm64") == "linux(+erofs)/arm64"


@pytest.mark.parametrize("text", ["linux/amd64", "linux/arm/v7", "linux(+erofs)/arm64"])
def test_check_platform_accepts_linux_platforms(text: str) -> None:
    assert platforms.check_platform(text) == text


@pytest.mark.parametrize("text", ["windows/amd64", "linux/sparc", "linux", "linux/arm/v7/x"])
def test_check_platform_refuses_what_matches_no_image(text: str) -> None:
    with pytest.raises(UsageError, match="is not a Linux platform"):
        platforms.check_platform(text)


def test_host_platform_is_one_containerd_knows() -> None:
    os_name, arch = platforms.host_platform().split("/")
    assert os_name == "linux" and arch in platforms.ARCHES
