"""containerd's platform strings: this host's, ``--platform``'s, and the ``+erofs`` form."""

from __future__ import annotations

import platform

from stream_processor.errors import UsageError

EROFS_FEATURE_SUFFIX = "(+erofs)"  # platforms.FormatAll's spelling of the OS feature

# GOARCH values containerd builds for Linux.
ARCHES = ("386", "amd64", "arm", "arm64", "loong64", "mips64le", "ppc64le", "riscv64", "s390x")


def host_platform() -> str:
    """containerd's platform string for this machine (``linux/amd64``, ``linux/arm64``)."""
    from stream_processor.convert.oci import normalize_arch  # the one alias table

    return f"linux/{normalize_arch(platform.machine().lower())}"


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


def erofs_platform(platform_name: str) -> str:
    """``linux/amd64`` -> ``linux(+erofs)/amd64``, the platform containerd 2.3 unpacks
    images marked with the OS feature ``erofs`` for."""
    os_name, _, rest = platform_name.partition("/")
    base = os_name.split("(", 1)[0]
    return f"{base}{EROFS_FEATURE_SUFFIX}/{rest}"
