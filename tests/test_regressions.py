"""Inputs the fuzzers (or reviews) found mishandled, pinned so they stay fixed.

Each file in ``tests/regressions/`` is a layer exactly as it was fed to the
processor; ``manifest.json`` gives its media type, the exit status and a
piece of the stderr line it must produce, and why it is there. A new finding
is added by dropping the input in the directory and describing it in the
manifest; ``test_every_file_is_described`` keeps the two in step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import _reliability_helpers as rh

HERE = Path(__file__).resolve().parent / "regressions"


def manifest() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((HERE / "manifest.json").read_text())
    return data


def test_every_file_is_described() -> None:
    files = {p.name for p in HERE.iterdir() if p.name != "manifest.json"}
    assert files == set(manifest())


@pytest.mark.parametrize("name", sorted(manifest()))
def test_regression(name: str) -> None:
    case = manifest()[name]
    data = (HERE / name).read_bytes()
    outcome = rh.run_decoder(data, case["media_type"])
    assert "Traceback" not in outcome.stderr
    assert outcome.exit_code == case["exit"], outcome.stderr
    if case["exit"] != rh.EXIT_OK:
        assert len(outcome.stderr_lines) == 1, outcome.stderr
        assert case["stderr"] in outcome.stderr
        assert rh.erofs_problem(outcome.stdout) is not None, "a complete image reached stdout"
    assert outcome.seconds < 10


@pytest.mark.parametrize("name", sorted(manifest()))
def test_regression_in_process(name: str) -> None:
    """The same input through the in-process decode the fuzzers use: no crash, oracle holds."""
    case = manifest()[name]
    data = (HERE / name).read_bytes()
    ok, output, message = rh.decode_in_process(data, case["media_type"], 64 << 20)
    assert ok == (case["exit"] == rh.EXIT_OK)
    limit = 64 << 20
    assert rh.violation(case["media_type"], data, ok, output, message, limit=limit) is None
