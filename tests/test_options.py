"""``commands._options`` and ``sizes``: one definition of what pack and convert accept.

The values are checked here directly, and through the CLI: the decoder's size options
here, pack's and convert's in test_pack.py and test_convert_edges.py; the size
formatting also through the decoder's window message.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
from pathlib import Path

import pytest

from stream_processor.commands._options import (
    LEVELS,
    Signalled,
    check_level,
    parse_chunk_size,
    parse_size,
    parse_threads,
    unwinds_on_signals,
)
from stream_processor.errors import UsageError
from stream_processor.mediatypes import Compression
from stream_processor.sizes import human
from tests.processor import run_cli


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("512", 512),
        ("4KiB", 4096),
        ("4k", 4096),
        ("8k", 8192),
        ("4M", 4 << 20),
        ("4MiB", 4 << 20),
        ("64G", 64 << 30),
        ("64GiB", 64 << 30),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "not a size: 'lots'"),
        ("", "not a size: ''"),
        ("4XB", "not a size: '4XB'"),
        ("k", "not a size: 'k'"),
        ("MiB", "not a size: 'MiB'"),
        ("1.5M", "not a size: '1.5M'"),
        ("0", "size must be positive: '0'"),
        ("-4K", "size must be positive: '-4K'"),
    ],
)
def test_parse_size_errors(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse_size(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-output-bytes", "lots"], "argument --max-output-bytes: not a size: 'lots'"),
        (["--max-output-bytes="], "argument --max-output-bytes: not a size: ''"),
        (["--max-window-size", "0"], "argument --max-window-size: size must be positive: '0'"),
        (["--max-output-bytes=-4K"], "argument --max-output-bytes: size must be positive: '-4K'"),
        (["decode", "--max-window-size", "1.5M"], "argument --max-window-size: not a size: '1.5M'"),
    ],
)
def test_parse_size_errors_through_the_cli(args: list[str], message: str, tmp_path: Path) -> None:
    """The decoder's own size options (fast path and ``decode`` alike): a usage error in one
    line, exit 2, nothing on stdout, nothing written."""
    proc = run_cli(args, b"not read", env={"EROFS_SP_LOG_FILE": str(tmp_path / "sp.log")})
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        f"erofs-stream-processor: {message} (see 'erofs-stream-processor --help')"
    ]
    assert list(tmp_path.iterdir()) == []


def test_thread_counts() -> None:
    assert parse_threads("3") == 3
    for bad, message in [("0", "at least 1"), ("-2", "at least 1"), ("two", "not a thread")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_threads(bad)


def test_levels_per_codec() -> None:
    assert LEVELS == {Compression.ZSTD: (1, 22), Compression.GZIP: (0, 9)}
    assert check_level(Compression.ZSTD, 22) == 22 and check_level(Compression.GZIP, 0) == 0
    assert check_level(Compression.NONE, None) is None
    with pytest.raises(UsageError, match=r"--level 23 is out of range for zstd: use 1\.\.22"):
        check_level(Compression.ZSTD, 23)
    with pytest.raises(UsageError, match=r"--level 10 is out of range for gzip: use 0\.\.9"):
        check_level(Compression.GZIP, 10)
    with pytest.raises(UsageError, match="does not apply to --compression none"):
        check_level(Compression.NONE, 1)


def test_chunk_sizes() -> None:
    assert parse_chunk_size("4KiB") == 4096 and parse_chunk_size("64MiB") == 64 << 20
    for bad in ("4095", "65M"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"outside 4 KiB\.\.64 MiB"):
            parse_chunk_size(bad)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (128 << 20, "128 MiB"),
        (212 * 1024 + 100, "212.1 KiB"),
        (3 << 40, "3 TiB"),
    ],
)
def test_human_sizes_show_their_unit(n: int | None, text: str) -> None:
    assert human(n) == text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_unwind_and_give_128_plus_the_signal(signum: int, tmp_path: Path) -> None:
    temporary = tmp_path / "temporary"
    previous = signal.getsignal(signum)

    @unwinds_on_signals
    def run(args: object) -> int:
        temporary.write_bytes(b"partial")
        try:
            os.kill(os.getpid(), signum)
            signal.pause()  # never reached: the handler raises first
            return 0
        finally:
            temporary.unlink()

    assert run(None) == 128 + signum
    assert not temporary.exists()
    assert signal.getsignal(signum) == previous  # put back
    assert Signalled(signum).exit_code == 128 + signum


def test_window_message_prints_units_that_show(erofs_image: Path, tmp_path: Path) -> None:
    """``--max-window-size 1KiB`` once said 'needs a 0 MiB window, more than the 0 MiB allowed'."""
    blob = tmp_path / "blob"
    assert run_cli(["pack", str(erofs_image), "-o", str(blob)]).returncode == 0
    proc = run_cli(["--max-window-size", "1KiB"], blob.read_bytes())
    assert proc.returncode == 65 and proc.stdout == b""
    [line] = proc.stderr.decode().splitlines()
    assert re.search(r"needs a \d+(\.\d)? KiB window, more than the 1 KiB allowed", line), line
