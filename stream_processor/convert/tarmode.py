"""Build a layer's EROFS image by streaming its tar into ``mkfs.erofs --tar=f --aufs``.

With erofs-utils >= 1.8 nothing needs unpacking: ``mkfs.erofs`` reads the
tar on stdin and turns OCI whiteouts into overlayfs ones itself (``--aufs``),
so a conversion needs neither root nor room for the unpacked tree. The flags
are containerd's erofs differ's own (``--tar=f --aufs --quiet
-Enoinline_data``, and ``--sort=none`` from 1.8.2, which keeps the data in tar
order and saves a pass) and ``-T<time> --mkfs-time`` for a fixed build time.
erofs-utils 1.7 introduced ``--tar``, but ``--mkfs-time`` came with 1.8
(erofs-utils commit 44ef438); without it the root and every directory the tar
does not list get the time of the build, so 1.7 is not used.

The layer is still untrusted. Every byte goes to ``mkfs.erofs`` through a
tee that this process reads with ``TarReader``, and every header is checked
by ``LayerNamespace`` on its way, with the same refusals as the unpacking
path; a refused entry stops the stream, ``mkfs.erofs`` is killed and the
caller removes its partial image. Since ``mkfs.erofs`` writes only the image
file, no entry can reach outside the work directory in any case.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from stream_processor.convert.erofsbuild import SORT_NONE_VERSION, Mkfs, mkfs_failed
from stream_processor.convert.namespace import ExtractStats, LayerNamespace
from stream_processor.convert.tarstream import TarReader
from stream_processor.errors import DataError
from stream_processor.sink import widen_pipe

READ_SIZE = 1 << 20


def mkfs_tar_command(mkfs: Mkfs, image: Path, fs_uuid: str, build_time: int) -> list[str]:
    """containerd's differ's flags, and those that make the image reproducible.

    ``-T --mkfs-time`` (1.8) fixes the build time without touching the files'
    own mtimes; directories the tar does not list (often the root) get it too.
    """
    cmd = [mkfs.path, "--tar=f", "--aufs", "--quiet", "-Enoinline_data"]
    if mkfs.version >= SORT_NONE_VERSION:
        cmd.append("--sort=none")
    return [*cmd, f"-T{build_time}", "--mkfs-time", f"-U{fs_uuid}", str(image)]


class _Tee(io.RawIOBase):
    """Reads from ``raw`` and writes every byte read into the file descriptor ``fd``."""

    def __init__(self, raw: BinaryIO, fd: int) -> None:
        super().__init__()
        self._raw = raw
        self._fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        n = len(data)
        view[:n] = data
        out = memoryview(data)
        while out:
            out = out[os.write(self._fd, out) :]
        return n


def build_from_tar(
    stream: BinaryIO,
    image: Path,
    *,
    mkfs: Mkfs,
    fs_uuid: str,
    build_time: int = 0,
    max_bytes: int,
) -> ExtractStats:
    """Stream the whole tar ``stream`` through ``mkfs.erofs --tar=f`` into ``image``.

    Reads ``stream`` to its end (``mkfs.erofs`` gets every byte). ``-T`` and
    ``-U`` put ``build_time`` and ``fs_uuid`` in the superblock; a caller that
    learns the real UUID only afterwards fixes it with
    ``erofsbuild.finish_image``.
    """
    names = LayerNamespace(max_bytes)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            mkfs_tar_command(mkfs, image, fs_uuid, build_time),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        assert proc.stdin is not None
        widen_pipe(proc.stdin.fileno())
        reader: TarReader | None = None
        try:
            tee = io.BufferedReader(_Tee(stream, proc.stdin.fileno()), READ_SIZE)
            reader = TarReader(tee)
            for member in reader:
                names.plan(member)
            reader = None  # every entry seen and accepted
            while tee.read(READ_SIZE):  # the end-of-archive blocks and anything after
                pass
        except BrokenPipeError:
            pass  # mkfs.erofs stopped reading: its exit status and message say why
        except BaseException:
            proc.kill()
            raise
        finally:
            _close(proc)
        if proc.returncode != 0:
            errors.seek(0)
            message = errors.read().decode("utf-8", "replace")
            raise mkfs_failed(mkfs, proc.returncode, message)
        if reader is not None:
            raise DataError(
                f"mkfs.erofs stopped reading the layer at byte {reader.offset}, before the "
                "tar's end-of-archive marker"
            )
    if not image.exists():
        raise DataError("mkfs.erofs wrote no image")
    return names.stats


def _close(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.wait()
