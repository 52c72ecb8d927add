"""The command line as people use it: exit codes, stderr, logs (fd 3 and a reader that
closes early are containerd's contract: test_contract)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from stream_processor import mediatypes as mt
from stream_processor.cli import main
from stream_processor.commands import decode as decode_command
from tests.conftest import ROOT, mkfs_erofs
from tests.processor import processor_argv, run_cli, start

ENV = mt.ENV_MEDIA_TYPE


def test_help_and_version() -> None:
    proc = run_cli(["--help"])
    assert proc.returncode == 0 and b"stream processor" in proc.stdout
    assert run_cli(["--version"]).stdout.startswith(b"erofs-stream-processor ")
    assert run_cli(["decode", "--help"]).returncode == 0


def test_bad_option_is_usage_error() -> None:
    proc = run_cli(["--no-such-option"])
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--media-type", mt.EROFS_LAYER_ZSTD],
        ["--media-type=" + mt.OCI_LAYER_TAR_GZIP, "--threads", "2", "--max-output-bytes", "8MiB"],
        ["--log-file", "/tmp/x.log", "--log-format=logfmt", "--log-level", "info"],
        ["--max-window-size", "1MiB", "--threads=1", "--threads", "3"],
    ],
)
def test_fast_parse_agrees_with_argparse(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    decode_command.add_arguments(parser)
    assert decode_command.parse_fast(argv) == parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--media"],  # an abbreviation: argparse's business
        ["--threads", "0"],
        ["--log-format", "xml"],
        ["--max-output-bytes", "lots"],
        ["--media-type"],
        ["--media-type", "--threads"],
        ["--bogus", "1"],
    ],
)
def test_fast_parse_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert decode_command.parse_fast(argv) is None


def test_in_process_main_returns_exit_codes() -> None:
    assert main(["--help"]) == 0
    assert main(["--media-type", "text/plain"]) == 2


def test_log_file_records_failure_with_reason(tmp_path: Path) -> None:
    log = tmp_path / "sp.log"
    proc = run_cli(
        stdin=b"not a layer at all", env={ENV: mt.EROFS_LAYER_ZSTD, "EROFS_SP_LOG_FILE": str(log)}
    )
    assert proc.returncode == 65
    record = json.loads(log.read_text())
    assert record["event"] == "decode_failed" and record["level"] == "error"
    assert record["exit_code"] == 65 and "does not" not in record["reason"]
    assert record["media_type"] == mt.EROFS_LAYER_ZSTD and record["bytes_out"] == 0
    assert "says zstd" in record["reason"]
    for key in ("bytes_in", "duration_s", "timestamp"):
        assert key in record


def test_success_is_logged_only_when_asked(erofs_bytes: bytes, tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor().compress(erofs_bytes)
    log = tmp_path / "sp.log"
    assert run_cli(["--log-file", str(log)], stdin=blob).returncode == 0
    assert not log.exists() or log.read_text() == ""
    proc = run_cli(
        ["--log-file", str(log), "--log-format", "logfmt"],
        stdin=blob,
        env={"EROFS_SP_LOG_LEVEL": "info"},
    )
    assert proc.returncode == 0
    line = log.read_text().strip()
    assert (
        "event=decoded" in line
        and "exit_code=0" in line
        and f"bytes_out={len(erofs_bytes)}" in line
    )


def test_unwritable_log_never_fails_the_decode(erofs_bytes: bytes, tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor().compress(erofs_bytes)
    missing = tmp_path / "no" / "such" / "dir" / "sp.log"
    proc = run_cli(["--log-file", str(missing), "--log-level", "info"], stdin=blob)
    assert proc.returncode == 0 and proc.stdout == erofs_bytes
    assert b"logging is off" in proc.stderr and len(proc.stderr.splitlines()) == 1


# -- issue 13: unknown commands, help COMMAND, log levels, honest byte counts ----------


def test_mistyped_command_is_one_usage_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw.erofs"
    raw.write_bytes(b"x" * 4096)
    proc = run_cli(["packk", str(raw)])
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        "erofs-stream-processor: unknown command 'packk'; commands: decode, pack, inspect, "
        "config, convert (see 'erofs-stream-processor --help')"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.erofs"]
    unknown_help = run_cli(["help", "packk"])
    assert unknown_help.returncode == 2 and b"unknown command 'packk'" in unknown_help.stderr


def test_help_command_is_command_help() -> None:
    assert run_cli(["help", "pack"]).stdout == run_cli(["pack", "--help"]).stdout
    assert run_cli(["help", "pack"]).stdout.startswith(b"usage: erofs-stream-processor pack")
    assert run_cli(["help"]).stdout == run_cli(["--help"]).stdout


def test_no_command_is_still_the_decoder(erofs_bytes: bytes) -> None:
    blob = zstandard.ZstdCompressor().compress(erofs_bytes)
    assert run_cli([], stdin=blob).stdout == erofs_bytes
    proc = run_cli(["--media-type", mt.EROFS_LAYER_ZSTD], stdin=blob)
    assert proc.returncode == 0 and proc.stdout == erofs_bytes


def test_usage_errors_are_one_line() -> None:
    proc = run_cli(["--threads", "0"])
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        "erofs-stream-processor: argument --threads: thread count must be at least 1: '0' "
        "(see 'erofs-stream-processor --help')"
    ]


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["--log-level", "debug"],
            {},
            "erofs-stream-processor: argument --log-level: invalid choice: 'debug' "
            "(choose from 'warning', 'info') (see 'erofs-stream-processor --help')",
        ),
        (
            [],
            {"EROFS_SP_LOG_LEVEL": "error"},
            "erofs-stream-processor: unknown log level 'error'; use warning or info",
        ),
    ],
)
def test_only_documented_log_levels(
    args: list[str], env: dict[str, str], line: str, erofs_bytes: bytes, tmp_path: Path
) -> None:
    log = tmp_path / "sp.log"
    blob = zstandard.ZstdCompressor().compress(erofs_bytes)
    proc = run_cli([*args, "--log-file", str(log)], stdin=blob, env=env)
    assert proc.returncode == 2 and proc.stdout == b"" and not log.exists()
    assert proc.stderr.decode().splitlines() == [line]
    helptext = run_cli(["--help"]).stdout.decode() + run_cli(["decode", "--help"]).stdout.decode()
    assert "debug" not in helptext and "{warning,info}" in helptext


def test_failure_record_counts_what_reached_stdout(erofs_bytes: bytes, tmp_path: Path) -> None:
    """A corrupt end: part of the image went out before the damage was found; the record's
    ``bytes_out`` is what stdout got, ``bytes_in`` what was read."""
    image = erofs_bytes * 8  # > the held-back tail plus a batch, so some output is written
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(image))
    blob[-2] ^= 0xFF  # the content checksum
    log = tmp_path / "sp.log"
    proc = run_cli(["--log-file", str(log), "--threads", "1"], stdin=bytes(blob))
    assert proc.returncode == 65 and len(proc.stderr.splitlines()) == 1
    assert len(proc.stdout) < len(image)  # how much got out before the abort varies
    record = json.loads(log.read_text())
    assert record["event"] == "decode_failed"
    assert record["bytes_out"] == len(proc.stdout)
    assert record["bytes_in"] == len(blob)


def test_failure_record_says_nothing_reached_stdout(erofs_bytes: bytes, tmp_path: Path) -> None:
    """The issue's case: a corrupt blob whose record said ``"bytes_out": 593920`` while
    stdout got nothing. An image within the held-back tail never reaches stdout."""
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(erofs_bytes))
    blob[-2] ^= 0xFF
    log = tmp_path / "sp.log"
    proc = run_cli(["--log-file", str(log)], stdin=bytes(blob))
    assert proc.returncode == 65 and proc.stdout == b"" and len(proc.stderr.splitlines()) == 1
    record = json.loads(log.read_text())
    assert (record["bytes_out"], record["bytes_in"]) == (0, len(blob))


def test_sigterm_record_counts_what_was_read(erofs_bytes: bytes, tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor(level=1).compress(os.urandom(1 << 20))
    fed = blob[: 100 * 1024]
    log = tmp_path / "sp.log"
    proc = start(processor_argv(["--threads", "1"]), env={"EROFS_SP_LOG_FILE": str(log)})
    assert proc.stdin is not None
    proc.stdin.write(fed)
    proc.stdin.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the processor has read all of it
        time.sleep(0.1)
        io = Path(f"/proc/{proc.pid}/io").read_text()
        rchar = int(io.split("rchar:")[1].split()[0])
        if rchar >= len(fed):
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 143 and out == b""
    record = json.loads(log.read_text())
    assert record["event"] == "terminated" and record["bytes_out"] == 0
    assert record["bytes_in"] == len(fed)


def test_records_keep_their_fields_without_structlog(erofs_bytes: bytes, tmp_path: Path) -> None:
    """The records structlog used to write: the same keys and formats, one line each."""
    blob = zstandard.ZstdCompressor().compress(erofs_bytes)
    log = tmp_path / "sp.log"
    for fmt in ("json", "logfmt"):
        args = ["--log-file", str(log), "--log-level", "info", "--log-format", fmt]
        assert run_cli(args, stdin=blob).returncode == 0
    json_line, logfmt_line = log.read_text().splitlines()
    record = json.loads(json_line)
    assert list(record)[:3] == ["timestamp", "level", "event"]
    assert record["level"] == "info" and record["event"] == "decoded"
    assert record["timestamp"].endswith("Z") and record["reason"] is None
    for key in ("media_type", "compression", "bytes_in", "bytes_out", "duration_s", "pid"):
        assert key in record
    assert record["bytes_out"] == len(erofs_bytes) and record["bytes_in"] == len(blob)
    assert logfmt_line.startswith("timestamp=") and " level=info event=decoded reason= " in (
        logfmt_line
    )


LEAN_START = (  # a small single-frame layer needs no thread, table or type machinery:
    # each of these (with what it loads) was milliseconds of every start (issue 12)
    "re",
    "typing",
    "enum",
    "signal",
    "collections",
    "functools",
    "contextlib",
    "threading",
    "array",
    "queue",
    "dataclasses",
)


def _imported_by_decode(tmp_path: Path, **env_extra: str) -> set[str]:
    """The modules a tiny erofs+zstd decode imports after ``site``, started through the
    installed launcher as the generated config starts it."""
    tree = tmp_path / "t"
    tree.mkdir(exist_ok=True)
    (tree / "hello").write_text("hello\n")
    blob = zstandard.ZstdCompressor().compress(mkfs_erofs(tree, tmp_path / "t.erofs").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EROFS_SP_", ENV))}
    env["EROFS_SP_LOG_FILE"] = str(tmp_path / "sp.log")  # as every generated config sets it
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "bin" / "erofs-stream-processor")],
        input=blob,
        capture_output=True,
        env={**env, **env_extra},
        cwd=ROOT,
        check=True,
    )
    lines = [line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()]
    # What ``site`` loaded (an editable install's finder imports re) is paid by
    # ``python -c pass`` too: count only what the program imported after it.
    imported = set(lines[lines.index("site") + 1 :])
    assert "stream_processor.decode" in imported
    return imported


def test_decode_start_up_imports_only_what_decoding_needs(tmp_path: Path) -> None:
    """What every layer's start-up must not pay for (issue 12): argparse, the log module
    without a record to write, hashlib without a frame to hash, structlog, a thread pool,
    python-zstandard's package ``__init__`` (``platform``; ``zstd_backend`` loads its C
    backend alone), and the standard library's heavier modules (``LEAN_START``)."""
    imported = _imported_by_decode(tmp_path)
    assert not (tmp_path / "sp.log").exists()
    for name in (
        "argparse",
        "stream_processor.log",
        "hashlib",
        "_hashlib",
        "structlog",
        "concurrent.futures",
        "json",
        "platform",
        "zstandard",
        *LEAN_START,
    ):
        assert name not in imported, name


def test_a_record_at_info_imports_only_the_log_module(tmp_path: Path) -> None:
    """A record may add 3 ms to a layer (issue 12): writing it loads ``log`` (and the C
    JSON string escaper), nothing from ``LEAN_START``."""
    imported = _imported_by_decode(tmp_path, EROFS_SP_LOG_LEVEL="info")
    assert '"event": "decoded"' in (tmp_path / "sp.log").read_text()
    assert "stream_processor.log" in imported
    for name in ("json", *LEAN_START):
        assert name not in imported, name


def test_gzip_decode_imports_no_zstd(tmp_path: Path) -> None:
    """A gzip layer loads only its own codec (issue 15): ``compression`` imports the
    codec it chose, so neither zstandard nor the zstd modules cost a gzip layer."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "hello").write_text("hello\n")
    image = mkfs_erofs(tree, tmp_path / "t.erofs").read_bytes()
    proc = run_cli([], gzip.compress(image), interpreter=["-X", "importtime"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == image
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()}
    assert "stream_processor.gzip_codec" in imported
    for name in ("zstandard", "stream_processor.zstd_codec", "stream_processor.zstd_parallel"):
        assert name not in imported, name


# -- issue 13: under --json a failure is also a JSON object (cli.main, for every command) -----


def _json_failure(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Exit ``code``, one stderr line, and on stdout exactly the object naming it."""
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == code and len(lines) == 1, proc.stderr
    message = lines[0].removeprefix("erofs-stream-processor: ")
    assert json.loads(proc.stdout) == {"error": message, "exit_code": code}
    return message


def test_json_failures_of_pack_and_convert(tmp_path: Path) -> None:
    missing = tmp_path / "nope.erofs"
    out = tmp_path / "out.blob"
    proc = run_cli(["pack", "--json", str(missing), "-o", str(out)])
    assert _json_failure(proc, 2) == f"{missing}: no such file or directory"
    proc = run_cli(["pack", str(missing), "-o", str(out), "--json", "--compression", "lz4"])
    assert "--compression" in _json_failure(proc, 2)  # refused while parsing
    proc = run_cli(["pack", "--json", "-", "-o", str(out)], stdin=b"not an image" * 400)
    assert _json_failure(proc, 65)
    proc = run_cli(["convert", "--json", str(tmp_path / "no-layout"), str(tmp_path / "dst")])
    assert "no-layout" in _json_failure(proc, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    proc = run_cli(["pack", str(missing), "-o", str(out)])  # without --json: the line only
    assert proc.returncode == 2 and proc.stdout == b"" and len(proc.stderr.splitlines()) == 1


def test_json_failure_goes_to_stderr_when_stdout_carries_the_layer() -> None:
    """``pack -o -`` writes the layer on stdout and its --json summary on stderr: so does
    a failure's object, after the one line."""
    proc = run_cli(["pack", "--json", "-", "-o", "-"], stdin=b"not an image" * 400)
    assert proc.returncode == 65 and proc.stdout == b""
    line, obj = proc.stderr.decode().splitlines()
    assert line.startswith("erofs-stream-processor: ")
    assert json.loads(obj) == {
        "error": line.removeprefix("erofs-stream-processor: "),
        "exit_code": 65,
    }


def test_decode_has_no_json_and_prints_none(erofs_bytes: bytes) -> None:
    proc = run_cli(["decode", "--json"], stdin=erofs_bytes)
    assert proc.returncode == 2 and proc.stdout == b""
    assert len(proc.stderr.splitlines()) == 1 and b"--json" in proc.stderr


def test_json_object_after_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C: exit 130 and no stderr line (as before), and the object under --json."""
    # stdin kept open and empty: inspect waits for the blob
    proc = start(processor_argv(["inspect", "--json", "-"]))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # past start-up: blocked reading the empty pipe
        if "pipe_read" in Path(f"/proc/{proc.pid}/wchan").read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == b""
    assert json.loads(out) == {"error": "interrupted (SIGINT)", "exit_code": 130}


def test_launcher_exits_fast_yet_flushes_and_keeps_exit_codes(tmp_path: Path) -> None:
    """``bin/erofs-stream-processor`` (what pip installs) ends a decode with ``os._exit``
    (issue 12: no interpreter teardown per layer): buffered text still reaches its reader,
    and the exit code is still the documented one."""
    launcher = [sys.executable, str(ROOT / "bin" / "erofs-stream-processor")]
    helped = subprocess.run([*launcher, "--media-type", "tar+zstd", "--help"], capture_output=True)
    assert helped.returncode == 0 and helped.stdout.rstrip().endswith(b")")
    assert b"--verify-frame-hashes" in helped.stdout
    refused = subprocess.run(launcher, input=b"\x28\xb5\x2f\xfd\x00", capture_output=True)
    assert refused.returncode == 65 and refused.stdout == b""
    assert refused.stderr.count(b"\n") == 1
    listed = subprocess.run([*launcher, "config", "--routes", "tar+zstd"], capture_output=True)
    assert listed.returncode == 0 and listed.stdout.endswith(b"\n")
