"""``containerd.configfile``: reading config.toml with errors in a user's words; TOML strings.

Atomic replacement with a backup is tested through ``config --merge`` in test_config_merge.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_processor.containerd import configfile
from stream_processor.errors import DataError, UsageError


@given(st.text())
def test_toml_string_round_trips(value: str) -> None:
    assert tomllib.loads(f"k = {configfile.toml_string(value)}")["k"] == value


def test_toml_list() -> None:
    assert configfile.toml_list(["a", 'b"']) == '["a", "b\\""]'


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        configfile.load_config(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="not a file"):
        configfile.load_config(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n")
    with pytest.raises(DataError, match=r"latin1\.toml is not valid TOML: not UTF-8 text"):
        configfile.load_config(latin1)
    with pytest.raises(DataError, match=r"^x\.toml is not valid TOML: .*line 1"):
        configfile.parse_config("version = = 3", "x.toml")


def test_read_text_lf_reads_crlf_files_as_lf(tmp_path: Path) -> None:
    """The merged file is written with \\n line ends whatever the original used."""
    crlf = tmp_path / "config.toml"
    crlf.write_bytes(b"version = 3\r\n# end\r\n")
    assert configfile.read_text_lf(str(crlf)) == "version = 3\n# end\n"
    assert configfile.load_config(crlf) == {"version": 3}
