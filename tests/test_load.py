"""Load: 16 decodes at once sharing one log file, as containerd unpacks layers in parallel.

Every output must be exactly right, every log record one whole JSON line
(each is one ``O_APPEND`` write), and the processes must share no temporary
files: each runs with its own empty working directory and a shared empty
``TMPDIR`` that must stay empty. A quarter of the layers are corrupt, so
failure records are written concurrently with success records.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from tests import _reliability_helpers as rh
from tests.processor import limit_address_space, processor_argv, start

PARALLEL = 16


@dataclass
class LoadResult:
    decodes: int
    seconds: float
    wrong: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    records: int = 0
    temp_files: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        if self.wrong:
            return f"wrong outcomes: {self.wrong[:3]}"
        if self.bad_lines:
            return f"log lines that are not whole records: {self.bad_lines[:2]}"
        if self.records != self.decodes:
            return f"{self.records} log records for {self.decodes} decodes"
        if self.temp_files:
            return f"temporary files left: {self.temp_files[:5]}"
        return None


def _layers(work: Path) -> list[tuple[str, bytes, bytes | None]]:
    """(media type, layer, expected output or None for a corrupt one), 16 of them."""
    image = rh.make_image(work, scale=3)
    comp = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    padded = comp.compress(image) + comp.compress(bytes(48 << 20)) + comp.flush()
    base = [
        (rh.ZSTD_ROUTE, rh.chunked_layer(image), image),
        (rh.ZSTD_ROUTE, padded, image + bytes(48 << 20)),
        (rh.GZIP_ROUTE, rh.gzip_member(image), image),
        (rh.RAW_ROUTE, image, image),
        (rh.TAR_ZSTD_ROUTE, rh.zstd_frame(rh.make_tar(work)), rh.make_tar(work)),
        (rh.TAR_GZIP_ROUTE, rh.gzip_member(image), image),
    ]
    layers: list[tuple[str, bytes, bytes | None]] = []
    for i in range(PARALLEL):
        media_type, data, expected = base[i % len(base)]
        if i % 4 == 3:  # corrupt: cut inside the stream
            layers.append((media_type, data[: len(data) * 2 // 3], None))
        else:
            layers.append((media_type, data, expected))
    return layers


def parallel_decodes(work: Path, log_file: Path) -> LoadResult:
    layers = _layers(work)
    tmpdir = work / "shared-tmp"
    tmpdir.mkdir(exist_ok=True)
    outcomes: list[tuple[int, bytes, bytes] | None] = [None] * len(layers)
    started = time.monotonic()
    procs = []
    for i, (media_type, _data, _expected) in enumerate(layers):
        cwd = work / f"cwd{i}"
        cwd.mkdir(exist_ok=True)
        procs.append(
            start(
                processor_argv(
                    rh.decoder_args(media_type, "--log-file", str(log_file), "--log-level", "info")
                ),
                env={"TMPDIR": str(tmpdir)},
                cwd=cwd,
                preexec_fn=limit_address_space(),
            )
        )

    def talk(i: int) -> None:
        out, err = procs[i].communicate(layers[i][1], timeout=120)
        outcomes[i] = (procs[i].returncode, out, err)

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = LoadResult(len(layers), time.monotonic() - started)
    for i, ((media_type, _data, expected), got) in enumerate(zip(layers, outcomes, strict=True)):
        assert got is not None
        code, out, err = got
        if expected is not None and (code != 0 or out != expected):
            result.wrong.append(f"#{i} {media_type}: exit {code} {err[-200:]!r}")
        if expected is None and (code != rh.EXIT_DATA or len(err.splitlines()) != 1):
            result.wrong.append(f"#{i} {media_type} (corrupt): exit {code} {err[-200:]!r}")
    for line in log_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            result.bad_lines.append(line[:200])
            continue
        if not isinstance(record, dict) or "event" not in record:
            result.bad_lines.append(line[:200])
        else:
            result.records += 1
    result.temp_files = [str(p) for p in tmpdir.rglob("*")]
    for i in range(len(layers)):
        result.temp_files += [str(p) for p in (work / f"cwd{i}").rglob("*")]
    return result


@pytest.mark.slow
def test_sixteen_parallel_decodes_share_one_log(tmp_path: Path) -> None:
    result = parallel_decodes(tmp_path, tmp_path / "shared.log")
    assert result.problem is None, result
    pids = {json.loads(line)["pid"] for line in (tmp_path / "shared.log").read_text().splitlines()}
    assert len(pids) == PARALLEL


def test_records_are_single_appends(tmp_path: Path) -> None:
    """A failed run appends exactly one whole JSON line (one write, newline included)."""
    log_file = tmp_path / "one.log"
    outcome = rh.run_decoder(
        b"\x28\xb5\x2f\xfd" + os.urandom(64),
        rh.ZSTD_ROUTE,
        "--log-file",
        str(log_file),
    )
    assert outcome.exit_code == rh.EXIT_DATA
    text = log_file.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text)["event"] == "decode_failed"
