"""An image larger than 4 GiB decodes and validates, with no 4 GiB file anywhere.

A real ``mkfs.erofs`` image followed by a little over 4 GiB of zeros (the
decoder allows bytes after the image) is compressed on the fly from a
generator, piped into the processor, and its output compared and hashed as
it streams by. That crosses gzip's 32-bit ISIZE (which wraps) and every
32-bit offset, on the zstd, gzip and raw routes, without storing anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from tests import _reliability_helpers as rh
from tests.processor import limit_address_space, processor_argv, start

PAD = (4 << 30) + (3 << 20) + 12345  # past 2^32 by a few MiB and an odd tail
STEP = 8 << 20
F_SETPIPE_SZ = 1031
WRAPS = ("zstd", "gzip", "raw")


@dataclass
class LargeResult:
    wrap: str
    exit_code: int | None
    bytes_out: int
    seconds: float
    sha256: str
    stderr: str
    problem: str | None = None


def _plain(image: bytes, pad: int) -> Iterator[bytes]:
    yield image
    zero = bytes(STEP)
    left = pad
    while left:
        n = min(left, STEP)
        yield zero[:n]
        left -= n


def _compressed(wrap: str, image: bytes, pad: int) -> Iterator[bytes]:
    if wrap == "raw":
        yield from _plain(image, pad)
        return
    if wrap == "zstd":
        zc = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
        for piece in _plain(image, pad):
            yield zc.compress(piece)
        yield zc.flush()
        return
    from isal import isal_zlib  # ISA-L: 60x faster than zlib at compressing zeros

    gc = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    for piece in _plain(image, pad):
        yield gc.compress(piece)
    yield gc.flush()


def _big_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # a larger pipe only speeds things up
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    return r, w


def decode_large(wrap: str, image: bytes, pad: int = PAD) -> LargeResult:
    """Stream ``image`` + ``pad`` zeros, wrapped, through the processor; check and hash."""
    route = {"zstd": rh.ZSTD_ROUTE, "gzip": rh.GZIP_ROUTE, "raw": rh.RAW_ROUTE}[wrap]
    in_r, in_w = _big_pipe()
    out_r, out_w = _big_pipe()
    started = time.monotonic()
    proc = start(
        processor_argv(rh.decoder_args(route, "--log-file", os.devnull)),
        stdin=in_r,
        stdout=out_w,
        preexec_fn=limit_address_space(),
    )
    os.close(in_r)
    os.close(out_w)

    def feed() -> None:
        try:
            for piece in _compressed(wrap, image, pad):
                view = memoryview(piece)
                while view:
                    view = view[os.write(in_w, view) :]
        except OSError:
            pass
        finally:
            os.close(in_w)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    digest = hashlib.sha256()
    total = 0
    head = bytearray()
    zero = bytes(1 << 20)
    mismatch = False
    with os.fdopen(out_r, "rb", buffering=0) as out:
        while True:
            chunk = out.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            if total < len(image):
                head += chunk[: len(image) - total]
                rest = chunk[len(image) - total :]
            else:
                rest = chunk
            if rest and rest != zero[: len(rest)]:
                mismatch = True
            total += len(chunk)
    code = rh.wait_exit(proc, 300)
    feeder.join(30)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    result = LargeResult(wrap, code, total, time.monotonic() - started, digest.hexdigest(), stderr)
    if code != 0:
        result.problem = f"exit {code}: {stderr!r}"
    elif total != len(image) + pad:
        result.problem = f"{total} bytes out, want {len(image) + pad}"
    elif bytes(head) != image or mismatch:
        result.problem = "output differs from image + zeros"
    return result


def expected_sha256(image: bytes, pad: int = PAD) -> str:
    digest = hashlib.sha256()
    for piece in _plain(image, pad):
        digest.update(piece)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return rh.make_image(tmp_path_factory.mktemp("large"))


@pytest.mark.slow
@pytest.mark.parametrize("wrap", WRAPS)
def test_image_over_4_gib_decodes_and_validates(image: bytes, wrap: str) -> None:
    result = decode_large(wrap, image)
    assert result.problem is None, result
    assert result.bytes_out > 1 << 32
    assert result.stderr == ""


def test_large_checks_catch_a_wrong_size(image: bytes) -> None:
    """The harness itself: a short pad is decoded, and the size check would notice."""
    result = decode_large("zstd", image, pad=5 << 20)
    assert result.problem is None, result
    assert result.sha256 == expected_sha256(image, 5 << 20)


def test_huge_image_claim_with_short_data_is_refused(image: bytes, tmp_path: Path) -> None:
    """A superblock promising 16 TiB (2^32-1 blocks) over 200 KiB of data: truncated, exit 65."""
    forged = bytearray(image)
    forged[rh.SB_OFFSET + 0x24 : rh.SB_OFFSET + 0x28] = b"\xff\xff\xff\xff"
    rh.reseal(forged)
    outcome = rh.run_decoder(rh.zstd_frame(bytes(forged)), rh.ZSTD_ROUTE)
    assert outcome.exit_code == rh.EXIT_DATA
    assert "truncated EROFS image" in outcome.stderr
    assert len(outcome.stderr_lines) == 1
