"""containerd's binary stream-processor contract, exercised on real layers.

Each test starts the processor through ``tests.processor.run_processor``,
which reproduces ``NewBinaryProcessor`` (env + STREAM_PROCESSOR_MEDIATYPE,
stdin fed by a writer thread, stdout read in 32 KiB pieces through SHA-256,
stderr collected, optional fd 3 payload pipe, kill on early close). Test
names say which clause of the contract failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

from stream_processor import mediatypes
from stream_processor.containerd.names import PROCESSOR_ID
from tests import _reliability_helpers as rh
from tests.conftest import make_tree, mkfs_erofs, require_tool
from tests.processor import (
    Observation,
    Payload,
    open_fds,
    processor_argv,
    run_cli,
    run_processor,
    sha256_file,
)

TAR_ZSTD = mediatypes.OCI_LAYER_TAR_ZSTD
TAR_GZIP = mediatypes.OCI_LAYER_TAR_GZIP
EROFS_ZSTD = mediatypes.EROFS_LAYER_ZSTD
EROFS_GZIP = mediatypes.EROFS_LAYER_GZIP
MEMORY_TARGET_KIB = 64 * 1024  # the product target: <= 64 MiB peak RSS
EXIT_DATA = 65
EXIT_USAGE = 2
EXIT_SIGPIPE = 128 + signal.SIGPIPE
LARGE_TREE_CANDIDATES = ("/usr/share/locale", "/usr/share/doc", "/usr/share")
LARGE_MIN_BYTES = 100 * 1024 * 1024


def _zstd(src: Path, dst: Path) -> Path:
    require_tool("zstd")
    subprocess.run(["zstd", "-q", "-f", "-T2", "-3", str(src), "-o", str(dst)], check=True)
    return dst


def _gzip(src: Path, dst: Path) -> Path:
    with open(dst, "wb") as out:
        subprocess.run(["gzip", "-n", "-c", str(src)], stdout=out, check=True)
    return dst


@pytest.fixture(scope="module")
def layers(
    erofs_image: Path, sample_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The sample image as +zstd/+gzip layers, and an ordinary tar layer as tar+zstd."""
    work = tmp_path_factory.mktemp("contract-layers")
    tar = work / "layer.tar"
    subprocess.run(
        ["tar", "--sort=name", "--mtime=@0", "-C", str(sample_tree), "-cf", str(tar), "."],
        check=True,
    )
    return {
        "image": erofs_image,
        "zstd": _zstd(erofs_image, work / "image.erofs.zst"),
        "gzip": _gzip(erofs_image, work / "image.erofs.gz"),
        "tar": tar,
        "tar.zstd": _zstd(tar, work / "layer.tar.zst"),
    }


@pytest.fixture(scope="module")
def large_layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A >= 100 MiB image built by mkfs.erofs from a real directory tree, and its zstd layer."""
    work = tmp_path_factory.mktemp("contract-large")
    image = work / "large.erofs"
    for candidate in LARGE_TREE_CANDIDATES:
        if os.path.isdir(candidate):
            mkfs_erofs(Path(candidate), image)
            if image.stat().st_size >= LARGE_MIN_BYTES:
                break
    else:  # no big system tree on this machine: synthesise enough real files
        tree = make_tree(work / "tree", scale=1)
        blob = os.urandom(1 << 20)
        for i in range(LARGE_MIN_BYTES >> 20):
            (tree / f"big{i}.bin").write_bytes(blob[i:] + blob[:i])
        mkfs_erofs(tree, image)
    assert image.stat().st_size >= LARGE_MIN_BYTES
    return image, _zstd(image, work / "large.erofs.zst")


def _assert_clean_success(obs: Observation, expected: Path) -> None:
    assert obs.stderr == b"", obs.stderr
    assert obs.returncode == 0
    assert obs.out_bytes == expected.stat().st_size
    assert obs.digest == sha256_file(expected)


def _assert_clean_failure(obs: Observation, expected: Path, exit_code: int, words: str) -> None:
    """One stderr line naming the problem, the exit status, and no complete image on stdout."""
    assert obs.returncode == exit_code, obs
    lines = obs.stderr_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("erofs-stream-processor: ")
    assert words in lines[0]
    assert "Traceback" not in obs.stderr.decode()
    assert obs.out_bytes < expected.stat().st_size
    assert obs.digest != sha256_file(expected)


# ------------------------------------------------------------------ success


@pytest.mark.parametrize(
    ("media_type", "layer"),
    [(TAR_ZSTD, "zstd"), (EROFS_ZSTD, "zstd"), (EROFS_GZIP, "gzip"), (TAR_GZIP, "gzip")],
)
def test_contract_stdout_digest_is_the_raw_image(
    layers: dict[str, Path], media_type: str, layer: str
) -> None:
    obs = run_processor(layers[layer], media_type)
    _assert_clean_success(obs, layers["image"])


def test_contract_tar_layer_on_shared_route_passes_through_byte_for_byte(
    layers: dict[str, Path],
) -> None:
    obs = run_processor(layers["tar.zstd"], TAR_ZSTD)
    _assert_clean_success(obs, layers["tar"])


def test_contract_without_media_type_env_detects_compression(layers: dict[str, Path]) -> None:
    obs = run_processor(layers["zstd"], None)
    _assert_clean_success(obs, layers["image"])


def decode_beside_fd3(
    blob: bytes | Path, image: bytes, payload: bytes | Payload, log: Path
) -> rh.FaultResult:
    """Decode ``blob`` with ``payload`` on fd 3 as containerd passes it; what went wrong, if
    anything. Whatever containerd puts there (nothing, an empty pipe, a pipe its writer keeps
    open and never writes, any payload), the output is the image, promptly, and the payload
    is drained off the main thread and then closed."""
    held = payload is Payload.HELD
    env = {"EROFS_SP_LOG_FILE": str(log), "EROFS_SP_LOG_LEVEL": "info"}
    obs = run_processor(blob, EROFS_ZSTD, payload=payload, env=env, inspect=not held, timeout=10)
    result = rh.FaultResult(obs.returncode, obs.seconds, obs.stderr.decode("utf-8", "replace"))
    record = json.loads(log.read_text()) if log.exists() else {}
    drained = record.get("fd3_payload_bytes")
    if obs.timed_out:
        result.problem = "the decode waited for fd 3 (killed after 10 s)"
    elif obs.returncode != 0 or obs.stderr:
        result.problem = f"exit {obs.returncode}: {result.stderr!r}"
    elif (obs.out_bytes, obs.digest) != (len(image), hashlib.sha256(image).hexdigest()):
        result.problem = f"{obs.out_bytes} bytes out, not the image"
    elif payload is Payload.ABSENT and (
        obs.payload_pipe is not None
        or (obs.fd3_at_start is not None and obs.fd3_at_start.startswith("pipe:"))
    ):
        result.problem = f"fd 3 was open: {obs.fd3_at_start}"
    elif payload is not Payload.ABSENT and obs.fd3_at_start != obs.payload_pipe:
        # the processor must really start with the payload pipe on fd 3, as ExtraFiles does
        result.problem = f"fd 3 was {obs.fd3_at_start}, not the payload pipe {obs.payload_pipe}"
    elif not held and not set(obs.fds_mid_run) <= {"0", "1", "2"}:
        # the processor drains fd 3 and closes it; it never keeps the pipe open
        result.problem = f"descriptors open mid-run: {obs.fds_mid_run}"
    elif (
        isinstance(payload, bytes)
        and len(payload) <= (1 << 20)
        and (obs.payload_written != len(payload) or obs.payload_error is not None)
    ):
        result.problem = f"the payload writer wrote {obs.payload_written}: {obs.payload_error}"
    elif payload is Payload.ABSENT and drained is not None:
        result.problem = f"logged {drained} payload bytes without a payload"
    elif payload is not Payload.ABSENT and not isinstance(payload, bytes) and drained != 0:
        result.problem = f"logged {drained} payload bytes of an empty payload"
    elif isinstance(payload, bytes) and not (
        # drained off the main thread: maybe not yet, or part; one atomic pipe write
        # (<= 4096 bytes) is all or nothing
        isinstance(drained, int)
        and 0 <= drained <= len(payload)
        and (len(payload) > 4096 or drained in (0, len(payload)))
    ):
        result.problem = f"logged {drained} payload bytes of {len(payload)}"
    return result


@pytest.mark.parametrize(
    "payload",
    [
        Payload.ABSENT,
        Payload.EMPTY,
        Payload.HELD,
        b"\x0a\x04type\x12\x02hi",
        os.urandom(100_000),
        b"x" * (3 << 20),
    ],
    ids=[
        "fd3-absent",
        "fd3-empty",
        "fd3-open-never-written",
        "fd3-small-any",
        "fd3-100KiB",
        "fd3-3MiB-over-drain-limit",
    ],
)
def test_contract_fd3_payload_never_blocks_nor_changes_output(
    layers: dict[str, Path], payload: bytes | Payload, tmp_path: Path
) -> None:
    image = layers["image"].read_bytes()
    result = decode_beside_fd3(layers["zstd"], image, payload, tmp_path / "sp.log")
    assert result.problem is None, result


def test_contract_no_stray_fds_children_or_zombies(layers: dict[str, Path]) -> None:
    before = open_fds()
    obs = run_processor(layers["zstd"], TAR_ZSTD, payload=b"payload", inspect=True)
    _assert_clean_success(obs, layers["image"])
    # mid-run the processor held stdio only (fd 3 drained and closed) and started no children
    assert set(obs.fds_mid_run) <= {"0", "1", "2"}, obs.fds_mid_run
    assert obs.children_mid_run == []
    # afterwards: nothing leaked in the parent, and the child is reaped (not a zombie:
    # its /proc entry is gone once wait4 collected it)
    assert open_fds() <= before | {str(fd) for fd in range(3)}
    assert not os.path.exists(f"/proc/{obs.pid}")


def test_contract_log_file_records_success_at_info(layers: dict[str, Path], tmp_path: Path) -> None:
    logfile = tmp_path / "sp.log"
    env = {"EROFS_SP_LOG_FILE": str(logfile), "EROFS_SP_LOG_LEVEL": "info"}
    obs = run_processor(layers["zstd"], TAR_ZSTD, env=env)
    _assert_clean_success(obs, layers["image"])
    record = json.loads(logfile.read_text().splitlines()[-1])
    assert record["event"] == "decoded"
    assert record["media_type"] == TAR_ZSTD
    assert record["bytes_out"] == layers["image"].stat().st_size


def test_contract_command_line_from_config_snippet_runs_under_a_bare_environment(
    layers: dict[str, Path], tmp_path: Path
) -> None:
    """What `config` registers (path, args, env) works with only systemd's short PATH around it."""
    result = run_cli(
        ["config", "--containerd-version", "1.6", "--log-file", str(tmp_path / "sp.log")],
        env={"PATH": "/usr/bin:/bin"},  # no console script: the -m stream_processor fallback
    )
    assert result.returncode == 0, result.stderr
    entry = tomllib.loads(result.stdout.decode())["stream_processors"][PROCESSOR_ID]
    assert os.path.isabs(entry["path"])
    env = dict(item.split("=", 1) for item in entry["env"])
    obs = run_processor(
        layers["zstd"],
        TAR_ZSTD,
        argv=[entry["path"], *entry["args"]],
        env=env,
        daemon_env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    _assert_clean_success(obs, layers["image"])


# ------------------------------------------------------------------ failures


def _corrupt(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_contract_corrupt_zstd_fails_with_one_line_and_no_complete_image(
    layers: dict[str, Path], tmp_path: Path
) -> None:
    bad = _corrupt(layers["zstd"], tmp_path / "bad.zst")
    obs = run_processor(bad, TAR_ZSTD)
    _assert_clean_failure(obs, layers["image"], EXIT_DATA, "zstd")


def test_contract_truncated_gzip_fails_with_one_line(
    layers: dict[str, Path], tmp_path: Path
) -> None:
    data = layers["gzip"].read_bytes()
    short = tmp_path / "short.gz"
    short.write_bytes(data[: len(data) - 100])
    obs = run_processor(short, EROFS_GZIP)
    _assert_clean_failure(obs, layers["image"], EXIT_DATA, "gzip")


def test_contract_media_type_mismatch_names_both(layers: dict[str, Path]) -> None:
    obs = run_processor(layers["zstd"], EROFS_GZIP)
    _assert_clean_failure(obs, layers["image"], EXIT_DATA, "says gzip")


def test_contract_unsupported_media_type_is_a_usage_error(layers: dict[str, Path]) -> None:
    obs = run_processor(layers["zstd"], "application/vnd.example.unknown+zstd")
    _assert_clean_failure(obs, layers["image"], EXIT_USAGE, "unsupported media type")


def test_contract_failure_reason_lands_in_log_file(layers: dict[str, Path], tmp_path: Path) -> None:
    """containerd 2.3's erofs differ drops stderr: the log file must hold the reason."""
    logfile = tmp_path / "sp.log"
    bad = _corrupt(layers["zstd"], tmp_path / "bad.zst")
    obs = run_processor(bad, TAR_ZSTD, env={"EROFS_SP_LOG_FILE": str(logfile)})
    assert obs.returncode == EXIT_DATA
    record = json.loads(logfile.read_text().splitlines()[-1])
    assert record["event"] == "decode_failed"
    assert "zstd" in record["reason"]
    assert record["exit_code"] == EXIT_DATA


# ------------------------------------------------------------ large layers


@pytest.mark.slow
def test_contract_large_layer_exact_digest_and_bounded_memory(
    large_layer: tuple[Path, Path],
) -> None:
    image, layer = large_layer
    obs = run_processor(layer, TAR_ZSTD, timeout=120)
    _assert_clean_success(obs, image)
    assert 0 < obs.peak_rss_kib <= MEMORY_TARGET_KIB, f"peak RSS {obs.peak_rss_kib} KiB"


@pytest.mark.slow
def test_contract_reader_closes_early_then_kill_leaves_no_zombie(
    large_layer: tuple[Path, Path],
) -> None:
    image, layer = large_layer
    obs = run_processor(layer, EROFS_ZSTD, close_after=256 * 1024)
    assert obs.closed_early
    assert obs.out_bytes < image.stat().st_size
    assert obs.returncode in (-signal.SIGKILL, EXIT_SIGPIPE, -signal.SIGPIPE)
    assert b"Traceback" not in obs.stderr
    assert not os.path.exists(f"/proc/{obs.pid}")


@pytest.fixture(scope="module")
def long_layers(tmp_path_factory: pytest.TempPathFactory) -> rh.Layers:
    """Layers whose output flows long before their input ends (one frame; 64 frames)."""
    return rh.make_layers(tmp_path_factory.mktemp("contract-long"))


def reader_leaves(
    source: bytes | Path, threads: str, close_after: int = 1 << 20, *, check_input: bool = False
) -> rh.FaultResult:
    """containerd's reader goes away after ``close_after`` bytes and nobody kills the process:
    EPIPE/SIGPIPE must end it by itself (exit 141), quietly, within 3 s; with
    ``check_input``, before it read all of an input larger than any pipe."""
    obs = run_processor(
        source,
        EROFS_ZSTD,
        argv=processor_argv(["--threads", threads]),
        close_after=close_after,
        kill_on_close=False,
        timeout=30,
    )
    result = rh.FaultResult(
        obs.returncode, obs.seconds_after_close, obs.stderr.decode("utf-8", "replace")
    )
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if not obs.closed_early:
        result.problem = f"the output ended at {obs.out_bytes} bytes, before the reader left"
    elif obs.timed_out:
        result.problem = "the processor kept running after its reader went away"
    elif obs.returncode != EXIT_SIGPIPE:
        result.problem = f"exit {obs.returncode}, want 141"
    elif obs.stderr:
        result.problem = f"not quiet: {result.stderr!r}"
    elif obs.seconds_after_close >= 3:
        result.problem = f"took {obs.seconds_after_close:.1f} s to notice"
    elif check_input and obs.stdin_written >= size and obs.stdin_error is None:
        result.problem = "it read all its input after the reader left"
    return result


@pytest.mark.parametrize(
    ("layer", "threads"),
    [
        pytest.param("large", "1", marks=pytest.mark.slow, id="100MiB-real-layer"),
        pytest.param("padded", "1", id="1-thread"),
        pytest.param("frames", "2", id="2-threads-32MiB-frames"),
    ],
)
def test_contract_reader_closes_early_without_kill_ends_quietly_on_epipe(
    layer: str, threads: str, request: pytest.FixtureRequest
) -> None:
    if layer == "large":
        result = reader_leaves(
            request.getfixturevalue("large_layer")[1], threads, 64 * 1024, check_input=True
        )
    else:
        long: rh.Layers = request.getfixturevalue("long_layers")
        result = reader_leaves(long.padded_zstd if layer == "padded" else long.many_frames, threads)
    assert result.problem is None, result
