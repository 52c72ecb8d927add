"""``log``: one record per line, readable by JSON and logfmt parsers, never failing a decode.

Records are read back with the stdlib ``json`` parser (what a log shipper
does); the logfmt rules are structlog's ``LogfmtRenderer``'s, which this
module replaced (test_log_record_rendering came from test_cli). The decode
command's records through the CLI are test_cli's and test_contract's.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from stream_processor.commands import decode as decode_command
from stream_processor.log import (
    CHOICES,
    ENV_FILE,
    ENV_FORMAT,
    ENV_LEVEL,
    FORMATS,
    LogConfig,
    render,
    write_record,
)
from stream_processor.mediatypes import EROFS_LAYER_ZSTD

NOW = 1_700_000_000.123456
STAMP = "2023-11-14T22:13:20.123456Z"


def test_json_record_keeps_order_and_types() -> None:
    fields: dict[str, object] = {
        "media_type": EROFS_LAYER_ZSTD,
        "bytes_in": 12,
        "ratio": 0.5,
        "nan": float("nan"),
        "inf": float("inf"),
        "ok": True,
        "failed": False,
        "reason": None,
        "frames": [1, 2, None],
        "path": Path("/var/log/sp.log"),
        "event": "ignored: the event is the argument",
        "level": "ignored too",
    }
    line = render("json", "info", "decoded", fields, NOW)
    assert "\n" not in line
    record = json.loads(line)
    assert list(record) == [
        "timestamp",
        "level",
        "event",
        "media_type",
        "bytes_in",
        "ratio",
        "nan",
        "inf",
        "ok",
        "failed",
        "reason",
        "frames",
        "path",
    ]
    assert record == {
        "timestamp": STAMP,
        "level": "info",
        "event": "decoded",
        "media_type": EROFS_LAYER_ZSTD,
        "bytes_in": 12,
        "ratio": 0.5,
        "nan": None,
        "inf": None,
        "ok": True,
        "failed": False,
        "reason": None,
        "frames": [1, 2, None],
        "path": "/var/log/sp.log",
    }


def test_log_record_rendering() -> None:
    fields: dict[str, object] = {
        "reason": 'bad "x" = y\nz',
        "n": 3,
        "f": 0.5,
        "none": None,
        "notes": ["a", 'b"'],
        "ok": True,
    }
    line = render("json", "error", "decode_failed", fields, 0.25)
    assert json.loads(line) == {
        "timestamp": "1970-01-01T00:00:00.250000Z",
        "level": "error",
        "event": "decode_failed",
        **fields,
    }
    assert render("logfmt", "info", "e", {"reason": 'a "b"', "x": None}, 0.0) == (
        'timestamp=1970-01-01T00:00:00.000000Z level=info event=e reason="a \\"b\\"" x='
    )


def test_json_strings_are_escaped_ascii() -> None:
    reason = 'zstd: "bad" frame\nat\toffset 4 \\ ü \x00'
    line = render("json", "warning", "decode_failed", {"reason": reason}, NOW)
    assert line.isascii()
    assert json.loads(line)["reason"] == reason


def test_timestamp_is_utc_with_microseconds() -> None:
    assert json.loads(render("json", "info", "e", {}, 0.0))["timestamp"] == (
        "1970-01-01T00:00:00.000000Z"
    )
    assert json.loads(render("json", "info", "e", {}, NOW))["timestamp"] == STAMP


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (42, "42"),
        (None, ""),
        (True, "true"),
        (False, "false"),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("C:\\dir x", '"C:\\\\dir x"'),  # a backslash is escaped only inside quotes
        ("C:\\dir", "C:\\dir"),
        ("line\nbreak", "line\\nbreak"),
    ],
)
def test_logfmt_values_as_structlog_wrote_them(value: object, text: str) -> None:
    line = render("logfmt", "warning", "decode_failed", {"reason": value}, NOW)
    assert line == f"timestamp={STAMP} level=warning event=decode_failed reason={text}"


@pytest.mark.parametrize(
    ("configured", "level", "enabled"),
    [
        ("warning", "info", False),
        ("warning", "warning", True),
        ("warning", "error", True),
        ("info", "info", True),
        ("info", "error", True),
    ],
)
def test_levels(configured: str, level: str, enabled: bool, tmp_path: Path) -> None:
    config = LogConfig(str(tmp_path / "sp.log"), level=configured)
    assert config.enabled_for(level) is enabled
    assert LogConfig(None, level=configured).enabled_for(level) is False


def test_records_are_appended_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "sp.log"
    path.write_text('{"earlier": "record"}\n')
    config = LogConfig(str(path), level="info")
    assert write_record(config, "info", "decoded", bytes_out=10)
    assert write_record(config, "warning", "decode_failed", reason="zstd: corrupt")
    first, second, third = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {"earlier": "record"}
    assert (second["event"], second["bytes_out"]) == ("decoded", 10)
    assert (third["level"], third["reason"]) == ("warning", "zstd: corrupt")


def test_a_level_not_asked_for_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sp.log"
    assert write_record(LogConfig(str(path)), "info", "decoded") is True
    assert write_record(LogConfig(None), "error", "decode_failed") is True
    assert not path.exists()


def test_parallel_writers_never_interleave(tmp_path: Path) -> None:
    """Decodes sharing one file (containerd pulls layers in parallel): every line whole."""
    path = tmp_path / "sp.log"
    config = LogConfig(str(path), fmt="json", level="info")
    reason = "x" * 3000  # a long record: more than one small write would be

    def many(worker: int) -> None:
        for i in range(200):
            write_record(config, "info", "decoded", worker=worker, i=i, reason=reason)

    threads = [threading.Thread(target=many, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 800
    assert {(r["worker"], r["i"]) for r in records} == {
        (w, i) for w in range(4) for i in range(200)
    }


@pytest.mark.parametrize(
    ("where", "detail"),
    [
        ("missing/sp.log", "No such file or directory"),
        ("", "Is a directory"),
        ("fifo", "No such device or address"),  # a FIFO nobody reads: never waits for one
    ],
)
def test_an_unwritable_log_turns_logging_off_in_one_line(
    where: str, detail: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / where
    if where == "fifo":
        os.mkfifo(path)
    assert write_record(LogConfig(str(path)), "error", "decode_failed", reason="r") is False
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"erofs-stream-processor: logging is off: cannot write {path}: {detail}\n"
    )


def test_a_full_disk_turns_logging_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert write_record(LogConfig("/dev/full"), "error", "decode_failed") is False
    assert capsys.readouterr().err == (
        "erofs-stream-processor: logging is off: cannot write /dev/full: No space left on device\n"
    )


def test_log_constants_match() -> None:
    """The decode command names the log settings without importing this module (start-up)."""
    assert decode_command.ENV_LOG_FILE == ENV_FILE
    assert decode_command.ENV_LOG_FORMAT == ENV_FORMAT
    assert decode_command.ENV_LOG_LEVEL == ENV_LEVEL
    assert decode_command.LOG_FORMATS == FORMATS
    assert decode_command.LOG_LEVELS == CHOICES
