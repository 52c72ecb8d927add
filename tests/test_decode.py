"""The stream processor end to end, as a separate process: every route and every bad input.

Images come from real mkfs.erofs; compressed forms from the real `zstd`,
`gzip`/`pigz` tools or python-zstandard. Outputs are checked byte for byte and
with fsck.erofs.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from stream_processor import mediatypes as mt
from tests.builders import patch_superblock
from tests.conftest import ROOT, make_tree, mkfs_erofs, require_tool
from tests.processor import run_cli

ENV = "STREAM_PROCESSOR_MEDIATYPE"


def zstd_cli(data: bytes, *args: str) -> bytes:
    require_tool("zstd")
    return subprocess.run(
        ["zstd", "-q", "-c", *args], input=data, capture_output=True, check=True
    ).stdout


def zstd_frames(data: bytes, frame_size: int) -> bytes:
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    return b"".join(
        cctx.compress(data[i : i + frame_size]) for i in range(0, len(data), frame_size)
    )


def skippable(payload: bytes, magic: int = 0x184D2A5A) -> bytes:
    return magic.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def tar_bytes(tree: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=".")
    return buf.getvalue()


def assert_failed(proc: subprocess.CompletedProcess[bytes], code: int, *words: str) -> str:
    """One stderr line, prefixed, no traceback, the exit code, and no complete image."""
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("erofs-stream-processor: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def medium_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A ~6 MiB real image: bigger than the held-back tail plus one write batch."""
    tree = make_tree(tmp_path_factory.mktemp("medium") / "root")
    big = tree / "big"
    big.mkdir()
    for i in range(6):
        (big / f"r{i}").write_bytes(os.urandom(1 << 20))
    return mkfs_erofs(tree, tmp_path_factory.mktemp("medium-img") / "m.erofs").read_bytes()


# --- routes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "media_type",
    [
        mt.EROFS_LAYER_ZSTD,
        mt.OCI_LAYER_EROFS + "+zstd",
        mt.OCI_LAYER_TAR_ZSTD,
        None,
    ],
)
def test_zstd_routes_produce_the_image(erofs_bytes: bytes, media_type: str | None) -> None:
    env = {ENV: media_type} if media_type else {}
    proc = run_cli(stdin=zstd_cli(erofs_bytes), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == erofs_bytes and proc.stderr == b""


@pytest.mark.parametrize(
    "media_type",
    [
        mt.EROFS_LAYER_GZIP,
        mt.OCI_LAYER_EROFS + "+gzip",
        mt.OCI_LAYER_TAR_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        None,
    ],
)
def test_gzip_routes_produce_the_image(erofs_bytes: bytes, media_type: str | None) -> None:
    env = {ENV: media_type} if media_type else {}
    proc = run_cli(stdin=gzip.compress(erofs_bytes), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == erofs_bytes


def test_plain_erofs_route_validates_and_passes_through(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=erofs_bytes, env={ENV: mt.EROFS_LAYER})
    assert proc.returncode == 0 and proc.stdout == erofs_bytes
    assert run_cli(stdin=erofs_bytes).stdout == erofs_bytes  # detected: no compression


def test_media_type_option_overrides_environment(erofs_bytes: bytes) -> None:
    proc = run_cli(
        ["--media-type", mt.EROFS_LAYER_GZIP],
        stdin=gzip.compress(erofs_bytes),
        env={ENV: mt.EROFS_LAYER_ZSTD},
    )
    assert proc.returncode == 0 and proc.stdout == erofs_bytes


def test_decode_subcommand_is_the_default(erofs_bytes: bytes) -> None:
    proc = run_cli(["decode"], stdin=zstd_cli(erofs_bytes))
    assert proc.stdout == erofs_bytes


@pytest.mark.parametrize("media_type", [mt.OCI_LAYER_TAR_ZSTD, mt.OCI_LAYER_TAR_GZIP])
def test_shared_route_passes_tar_through_byte_for_byte(sample_tree: Path, media_type: str) -> None:
    tar = tar_bytes(sample_tree)
    wrapped = zstd_cli(tar) if media_type.endswith("zstd") else gzip.compress(tar)
    proc = run_cli(stdin=wrapped, env={ENV: media_type})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == tar


def test_shared_route_passes_an_empty_tar_layer() -> None:
    empty = b"\0" * 1024  # what an empty layer (ENV-only Dockerfile step) holds
    proc = run_cli(stdin=zstd_cli(empty), env={ENV: mt.OCI_LAYER_TAR_ZSTD})
    assert proc.returncode == 0 and proc.stdout == empty


def test_shared_route_rejects_what_is_neither(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=zstd_cli(b"hello, not a layer\n" * 100), env={ENV: mt.OCI_LAYER_TAR_ZSTD})
    assert_failed(proc, 65, "expected an EROFS image or a tar archive, got:")
    assert proc.stdout == b""


def test_output_passes_fsck(erofs_bytes: bytes, tmp_path: Path) -> None:
    require_tool("fsck.erofs")
    proc = run_cli(stdin=zstd_cli(erofs_bytes))
    out = tmp_path / "layer.erofs"
    out.write_bytes(proc.stdout)
    subprocess.run(["fsck.erofs", str(out)], check=True, capture_output=True)


def test_many_frames_and_skippable_frames(medium_image: bytes) -> None:
    blob = skippable(b"lead") + zstd_frames(medium_image, 1 << 20) + skippable(b"x" * 5000)
    proc = run_cli(stdin=blob, env={ENV: mt.EROFS_LAYER_ZSTD})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == medium_image


def test_several_gzip_members(medium_image: bytes) -> None:
    half = len(medium_image) // 2
    blob = gzip.compress(medium_image[:half]) + gzip.compress(medium_image[half:])
    proc = run_cli(stdin=blob, env={ENV: mt.EROFS_LAYER_GZIP})
    assert proc.returncode == 0 and proc.stdout == medium_image


def test_appended_data_is_allowed_and_logged(erofs_bytes: bytes, tmp_path: Path) -> None:
    log = tmp_path / "sp.log"
    data = erofs_bytes + b"\0" * 8192
    proc = run_cli(["--log-file", str(log), "--log-level", "info"], stdin=zstd_cli(data))
    assert proc.returncode == 0 and proc.stdout == data
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["event"] == "decoded" and "8192 bytes follow the EROFS image" in record["notes"]


# --- bad input ------------------------------------------------------------------------


def test_empty_input() -> None:
    proc = run_cli(stdin=b"", env={ENV: mt.EROFS_LAYER_ZSTD})
    assert_failed(proc, 65, "input is empty")
    assert proc.stdout == b""


def test_unknown_media_type_is_a_usage_error(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=zstd_cli(erofs_bytes), env={ENV: "application/x-foo"})
    line = assert_failed(proc, 2)
    assert proc.stdout == b""
    assert "application/x-foo" in line and mt.EROFS_LAYER_ZSTD in line


@pytest.mark.parametrize(
    ("name", "wrap"),
    [("tar+zstd", "zstd"), ("erofs+zstd", "zstd"), ("tar+gzip", "gzip"), ("erofs+gzip", "gzip")],
)
def test_short_media_type_names_decode(erofs_bytes: bytes, name: str, wrap: str) -> None:
    """The names ``config --routes`` takes: on the command line and in containerd's env."""
    blob = zstd_cli(erofs_bytes) if wrap == "zstd" else gzip.compress(erofs_bytes)
    for args, env in ((["decode", "--media-type", name], {}), ([], {ENV: name})):
        proc = run_cli(args, stdin=blob, env=env)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
        assert proc.stdout == erofs_bytes


def test_short_name_mismatch_names_the_full_media_type(erofs_bytes: bytes) -> None:
    proc = run_cli(["--media-type", "erofs+gzip"], stdin=zstd_cli(erofs_bytes))
    assert_failed(proc, 65, f"media type {mt.EROFS_LAYER_GZIP} says gzip", "data is zstd")
    assert proc.stdout == b""


def test_unknown_media_type_lists_the_names_config_accepts(erofs_bytes: bytes) -> None:
    proc = run_cli(["decode", "--media-type", "tar+lz4"], stdin=zstd_cli(erofs_bytes))
    line = assert_failed(proc, 2, "unsupported media type 'tar+lz4'")
    assert proc.stdout == b""
    assert line.endswith(f"supported: {mt.describe_supported()}")
    assert "tar+zstd" in line and "*" not in line
    helptext = " ".join(run_cli(["decode", "--help"]).stdout.decode().split())
    assert f"short name ({', '.join(mt.SHORT_NAMES)})" in helptext


def test_declared_zstd_but_gzip_names_both(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=gzip.compress(erofs_bytes), env={ENV: mt.EROFS_LAYER_ZSTD})
    assert_failed(proc, 65, "says zstd", "data is gzip")
    assert proc.stdout == b""


def test_declared_gzip_but_raw_names_what_arrived(sample_tree: Path) -> None:
    proc = run_cli(stdin=tar_bytes(sample_tree), env={ENV: mt.EROFS_LAYER_GZIP})
    assert_failed(proc, 65, "says gzip", "tar archive")
    assert proc.stdout == b""


def test_tar_on_an_erofs_route_is_named_by_libmagic(sample_tree: Path) -> None:
    proc = run_cli(stdin=zstd_cli(tar_bytes(sample_tree)), env={ENV: mt.EROFS_LAYER_ZSTD})
    assert_failed(proc, 65, "expected an EROFS image, got:", "tar archive")
    assert proc.stdout == b""


def test_bad_superblock_leaves_stdout_empty(medium_image: bytes) -> None:
    bad = bytearray(medium_image)
    bad[1024 + 0x10] ^= 0x01  # inode count changes: checksum no longer matches
    proc = run_cli(stdin=zstd_cli(bytes(bad)))
    assert_failed(proc, 65, "checksum mismatch")
    assert proc.stdout == b""


def test_truncated_image_is_incomplete(medium_image: bytes) -> None:
    short = medium_image[: len(medium_image) - 4096]
    proc = run_cli(stdin=zstd_cli(short))
    assert_failed(proc, 65, "truncated EROFS image")
    assert len(proc.stdout) < len(short)


def test_truncated_zstd_frame_holds_back_the_tail(medium_image: bytes) -> None:
    blob = zstd_cli(medium_image)
    proc = run_cli(stdin=blob[: len(blob) - 100])
    assert_failed(proc, 65, "truncated")
    assert 0 < len(proc.stdout) <= len(medium_image) - 256 * 1024


def test_corrupt_zstd_block_header(medium_image: bytes) -> None:
    blob = bytearray(zstd_cli(medium_image))
    first_block = zstandard.frame_header_size(bytes(blob[:18]))
    blob[first_block] |= 0b110  # block type 3 is reserved
    proc = run_cli(stdin=bytes(blob))
    assert_failed(proc, 65, "corrupt block header")
    assert proc.stdout == b""


def test_corrupt_compressed_data_is_caught(medium_image: bytes) -> None:
    blob = bytearray(zstd_cli(medium_image, "--no-check", "-19"))
    for at in range(len(blob) // 3, len(blob) // 3 + 64):
        blob[at] ^= 0xA5
    proc = run_cli(stdin=bytes(blob))
    assert proc.returncode != 0 or proc.stdout != medium_image  # no checksum: may decode wrong
    with_check = bytearray(zstd_cli(medium_image, "-19"))
    for at in range(len(with_check) // 3, len(with_check) // 3 + 64):
        with_check[at] ^= 0xA5
    proc = run_cli(stdin=bytes(with_check))
    assert_failed(proc, 65, "zstd")
    assert len(proc.stdout) < len(medium_image)


def test_zstd_content_checksum_mismatch(erofs_bytes: bytes) -> None:
    blob = bytearray(zstd_frames(erofs_bytes, len(erofs_bytes)))
    blob[-1] ^= 0xFF  # the frame's XXH64 checksum
    proc = run_cli(stdin=bytes(blob))
    assert_failed(proc, 65, "zstd")
    assert len(proc.stdout) < len(erofs_bytes)


def test_trailing_garbage_after_zstd(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=zstd_cli(erofs_bytes) + b"GARBAGE!")
    assert_failed(proc, 65, "trailing data", "neither a zstd frame nor a skippable frame")
    assert len(proc.stdout) < len(erofs_bytes)


def test_truncated_skippable_frame(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=zstd_cli(erofs_bytes) + skippable(b"x" * 100)[:50])
    assert_failed(proc, 65, "skippable frame", "truncated")
    assert proc.stdout == b""  # the whole ~200 KiB image is inside the held-back tail


def test_gzip_crc_mismatch(erofs_bytes: bytes) -> None:
    blob = bytearray(gzip.compress(erofs_bytes))
    blob[-8] ^= 0xFF  # CRC32
    proc = run_cli(stdin=bytes(blob), env={ENV: mt.EROFS_LAYER_GZIP})
    assert_failed(proc, 65, "gzip")
    assert len(proc.stdout) < len(erofs_bytes)


def test_gzip_isize_mismatch(erofs_bytes: bytes) -> None:
    blob = bytearray(gzip.compress(erofs_bytes))
    blob[-1] ^= 0x01  # ISIZE
    proc = run_cli(stdin=bytes(blob), env={ENV: mt.EROFS_LAYER_GZIP})
    assert_failed(proc, 65, "gzip")
    assert proc.stdout == b""


def test_truncated_gzip(medium_image: bytes) -> None:
    blob = gzip.compress(medium_image)
    proc = run_cli(stdin=blob[:-20], env={ENV: mt.EROFS_LAYER_GZIP})
    assert_failed(proc, 65, "truncated")
    assert len(proc.stdout) <= len(medium_image) - 256 * 1024


def test_trailing_garbage_after_gzip(erofs_bytes: bytes) -> None:
    proc = run_cli(stdin=gzip.compress(erofs_bytes) + b"junk", env={ENV: mt.EROFS_LAYER_GZIP})
    assert_failed(proc, 65, "trailing data", "not a gzip member")
    assert proc.stdout == b""


def test_decompression_bomb_is_stopped(erofs_bytes: bytes) -> None:
    cctx = zstandard.ZstdCompressor(level=19)
    bomb = cctx.compress(erofs_bytes) + cctx.compress(
        b"\0" * (64 << 20)
    )  # 64 MiB of output from < 256 KiB
    assert len(bomb) < 256 << 10
    proc = run_cli(["--max-output-bytes", "8MiB"], stdin=bomb)
    assert_failed(proc, 65, "exceeds the limit")
    assert len(proc.stdout) <= 8 << 20


def test_zstd_window_is_bounded(medium_image: bytes) -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    blob = zstandard.ZstdCompressor(compression_params=params).compress(medium_image)
    assert run_cli(stdin=blob).returncode == 0
    proc = run_cli(["--max-window-size", "1MiB"], stdin=blob)
    assert_failed(proc, 65, "window")
    assert proc.stdout == b""


def test_only_skippable_frames() -> None:
    proc = run_cli(stdin=skippable(b"abc"))
    assert_failed(proc, 65, "no data frame")
    assert proc.stdout == b""


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "words"),
    [
        (0x0C, "<B", 17, "block size 2^17"),
        (0x0C, "<B", 8, "block size 2^8"),
        (0x50, "<I", 0x8000, "unknown incompatible features 0x8000"),
        (0x0D, "<B", 255, "do not fit"),
        (0x24, "<I", 0, "claims 0 blocks"),
    ],
)
def test_unmountable_superblocks_are_refused(
    erofs_bytes: bytes, offset: int, fmt: str, value: int, words: str
) -> None:
    """Checksum resealed, so each field is the only thing wrong: nothing reaches stdout."""
    bad = patch_superblock(erofs_bytes, offset, fmt, value)
    proc = run_cli(stdin=zstd_cli(bad), env={ENV: mt.EROFS_LAYER_ZSTD})
    assert_failed(proc, 65, words)
    assert proc.stdout == b""


# --- issue 13: terminals ----------------------------------------------------------------


def _run_on_pty(erofs_blob: bytes | None, tmp_path: Path) -> tuple[int, str, bytes]:
    """Run the decoder with stdin (``erofs_blob is None``) or stdout on a pseudo-terminal;
    returns the exit code, stderr and what the terminal received."""
    import pty

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != ENV}
    try:
        blob_file = tmp_path / "blob"
        blob_file.write_bytes(erofs_blob or b"")
        with open(blob_file, "rb") as blob:
            proc = subprocess.run(
                [sys.executable, "-m", "stream_processor"],
                stdin=slave if erofs_blob is None else blob,
                stdout=slave if erofs_blob is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=ROOT,
                timeout=30,
            )
        os.set_blocking(master, False)
        try:
            shown = os.read(master, 1 << 20)
        except BlockingIOError:
            shown = b""
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, proc.stderr.decode(), shown + (proc.stdout or b"")


def test_stdin_on_a_terminal_is_refused_at_once(tmp_path: Path) -> None:
    code, err, out = _run_on_pty(None, tmp_path)  # would otherwise wait for keystrokes
    assert code == 2 and out == b""
    assert err.splitlines() == [
        "erofs-stream-processor: stdin is a terminal; give the layer on stdin (< layer.blob)"
    ]


def test_image_is_not_written_to_a_terminal(erofs_bytes: bytes, tmp_path: Path) -> None:
    code, err, out = _run_on_pty(zstd_cli(erofs_bytes), tmp_path)
    assert code == 2 and out == b""
    assert err.splitlines() == [
        "erofs-stream-processor: refusing to write an EROFS image to a terminal; redirect stdout"
    ]
