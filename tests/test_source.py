"""Source: peek/take/skip across refills, exact positions, EOF."""

from __future__ import annotations

import os
import threading

from stream_processor.source import Source


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()

    def feed() -> None:
        os.write(w, data) if len(data) < 65536 else [
            os.write(w, data[i : i + 4096]) for i in range(0, len(data), 4096)
        ]
        os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return r


def test_peek_take_skip_positions() -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: more than the buffer
    src = Source(_pipe_with(data), capacity=1 << 19)
    assert bytes(src.peek(4)) == data[:4] and src.position == 0
    assert bytes(src.take(10)) == data[:10] and src.position == 10
    assert src.skip(700_000) == 700_000
    assert bytes(src.take(300_000)) == data[700_010:1_000_010]
    rest = b""
    while chunk := src.read_some():
        rest += bytes(chunk)
    assert rest == data[1_000_010:]
    assert src.at_eof() and src.position == len(data)


def test_short_reads_at_eof() -> None:
    src = Source(_pipe_with(b"abc"))
    assert bytes(src.peek(10)) == b"abc"
    assert bytes(src.take(10)) == b"abc"
    assert bytes(src.take(1)) == b"" and src.skip(5) == 0
