"""Byte counts for people: ``human(1024)`` is ``1 KiB``, ``human(1536)`` is ``1.5 KiB``.

A module of its own, importing nothing, so that the decoder's error paths
(``zstd_codec``'s window message) can format a size without loading any of
``convert``; pack's and convert's progress lines use the same function.
"""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human(n: int | None) -> str:
    """``n`` bytes with the largest binary unit it reaches; exact values print no decimals.

    ``needs a 1 KiB window`` rather than ``needs a 0 MiB window``: a value below
    a unit is never rounded down to zero of it.
    """
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "B" or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def of_total(n: int, total: int) -> str:
    """``3 MiB of 12 MiB (25%)``: progress through a known total (capped at 100%)."""
    return f"{human(n)} of {human(total)} ({min(100, 100 * n // total)}%)"
