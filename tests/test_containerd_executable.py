"""``containerd.executable``: what containerd is told to start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stream_processor import PROG
from stream_processor.containerd import executable
from stream_processor.errors import UsageError


def test_find_executable_prefers_console_script_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / PROG
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert executable.find_executable() == executable.Executable(str(script))


def test_find_executable_falls_back_to_this_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    exe = executable.find_executable()
    assert exe.path == os.path.abspath(sys.executable)
    assert exe.args == ("-m", "stream_processor")
    # a checkout (not installed in site-packages) must be importable by containerd's child
    assert all(e.startswith("PYTHONPATH=") for e in exe.env)


def test_find_executable_registers_the_script_it_was_started_as(tmp_path: Path) -> None:
    script = tmp_path / PROG
    script.write_text("#!/bin/sh\n")
    assert executable.find_executable(invoked=str(script)) == executable.Executable(str(script))


def test_explicit_path_must_be_absolute() -> None:
    assert executable.find_executable("/opt/x/../bin/sp").path == "/opt/bin/sp"
    with pytest.raises(UsageError, match="is not absolute"):
        executable.find_executable("bin/sp")
