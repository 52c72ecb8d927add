"""Property-based fuzzing of the decoder (hypothesis), and a short atheris run.

Seeds are real ``mkfs.erofs`` images (and a real tar) wrapped every way the
project supports; hypothesis picks a seed, a structural mutation and its
random choices, and shrinks any counterexample. The oracle is
``_reliability_helpers.violation``: a decode may succeed only with exactly
what a strict independent decoder makes of the stream, and that must be a
sound EROFS image (or a tar on the shared route); anything else must be a
one-line ``DataError``. The CLI-level properties run the real program in a
subprocess under a 1 GiB address-space limit and a timeout.
"""

from __future__ import annotations

import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import _reliability_helpers as rh
from tests.conftest import require_tool
from tests.fuzz import seeds as corpus

LIMIT = 64 << 20
CLI_CASES_PER_CLASS = 10
FUZZ_SECONDS = 20


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[rh.Seed]:
    work = tmp_path_factory.mktemp("fuzz-seeds")
    return rh.build_seeds(rh.make_image(work), rh.make_tar(work))


_SEED_NAMES = [
    "zstd",
    "zstd-chunked",
    "gzip",
    "gzip-multi",
    "raw",
    "detect-zstd",
    "tar+zstd-erofs",
    "tar+gzip-erofs",
    "tar+zstd-tar",
    "tar+gzip-tar",
]


def _by_name(seeds: list[rh.Seed], name: str) -> rh.Seed:
    return next(s for s in seeds if s.name == name)


def test_seed_names_cover_every_wrapping(seeds: list[rh.Seed]) -> None:
    assert [s.name for s in seeds] == _SEED_NAMES


@pytest.mark.parametrize("name", _SEED_NAMES)
def test_every_seed_decodes_exactly_under_a_memory_limit(seeds: list[rh.Seed], name: str) -> None:
    seed = _by_name(seeds, name)
    outcome = rh.run_decoder(seed.data, seed.media_type)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == seed.expected
    assert outcome.stderr == ""


def test_seed_image_passes_fsck(seeds: list[rh.Seed], tmp_path: Path) -> None:
    require_tool("fsck.erofs")
    image = tmp_path / "out.erofs"
    image.write_bytes(rh.run_decoder(_by_name(seeds, "zstd-chunked").data, rh.ZSTD_ROUTE).stdout)
    subprocess.run(["fsck.erofs", str(image)], check=True, capture_output=True)


def _truncations(seed: rh.Seed) -> list[int]:
    """Every framing boundary of ``seed`` and the bytes either side of it."""
    cuts = {c + d for c in rh.boundaries(seed.data) for d in (-1, 0, 1)}
    return sorted(c for c in cuts if 0 <= c < len(seed.data))


@pytest.mark.parametrize("name", _SEED_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_truncation_at_every_framing_boundary(
    seeds: list[rh.Seed], name: str, threads: int
) -> None:
    """Cut at each frame/member/block/checksum/table boundary (and +-1): refused, or
    (only when just trailing metadata such as the chunk table went) the exact image."""
    seed = _by_name(seeds, name)
    for cut in _truncations(seed):
        data = seed.data[:cut]
        ok, output, message = rh.decode_in_process(data, seed.media_type, LIMIT, threads)
        assert rh.violation(seed.media_type, data, ok, output, message, limit=LIMIT) is None
        assert not ok or output == seed.expected, (cut, len(output))


@pytest.mark.slow
def test_cli_truncations_of_a_chunked_layer(seeds: list[rh.Seed]) -> None:
    """The same cuts through the real CLI: exit 65 + one line, and no complete image on stdout."""
    seed = _by_name(seeds, "zstd-chunked")

    def judge(cut: int) -> str | None:
        data = seed.data[:cut]
        outcome = rh.run_decoder(data, seed.media_type)
        if outcome.exit_code == 0:
            return None if outcome.stdout == seed.expected else f"cut {cut}: wrong output"
        problem = rh.cli_violation(outcome, seed.media_type, data, None)
        return None if problem is None else f"cut {cut}: {problem}"

    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(judge, _truncations(seed)) if p]
    assert not problems, problems[:5]


# In process: hundreds of mutated layers per run, shrunk on failure.
@pytest.mark.slow
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(_SEED_NAMES),
    mutator=st.sampled_from(sorted(rh.MUTATORS)),
    rng_seed=st.integers(0, 2**32 - 1),
    threads=st.sampled_from([1, 2]),
)
def test_mutated_layers_decode_right_or_fail_cleanly(
    seeds: list[rh.Seed], name: str, mutator: str, rng_seed: int, threads: int
) -> None:
    seed = _by_name(seeds, name)
    data = rh.MUTATORS[mutator](seed, random.Random(rng_seed))
    ok, output, message = rh.decode_in_process(data, seed.media_type, LIMIT, threads)
    assert rh.violation(seed.media_type, data, ok, output, message, limit=LIMIT) is None
    assert rh.table_violation(seeds, data, ok, output, seed.media_type) is None


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(_SEED_NAMES),
    route=st.sampled_from(corpus.ROUTES),
    edits=st.lists(
        st.tuples(st.integers(0, 2**31), st.integers(0, 255), st.sampled_from("xitd")),
        min_size=1,
        max_size=4,
    ),
    threads=st.sampled_from([1, 2]),
)
def test_byte_edits_on_any_route(
    seeds: list[rh.Seed],
    name: str,
    route: str | None,
    edits: list[tuple[int, int, str]],
    threads: int,
) -> None:
    """xor / insert / truncate / delete bytes anywhere, and send the result on any route."""
    data = bytearray(_by_name(seeds, name).data)
    for pos, value, op in edits:
        at = pos % (len(data) + 1)
        if op == "x" and at < len(data):
            data[at] ^= value or 1
        elif op == "i":
            data[at:at] = bytes([value]) * (1 + value % 9)
        elif op == "t":
            del data[at:]
        elif op == "d":
            del data[at : at + 1 + value]
    ok, output, message = rh.decode_in_process(bytes(data), route, LIMIT, threads)
    assert rh.violation(route, bytes(data), ok, output, message, limit=LIMIT) is None
    assert rh.table_violation(seeds, bytes(data), ok, output, route) is None


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"\x28\xb5\x2f\xfd", b"\x50\x2a\x4d\x18", b"\x1f\x8b\x08\x00"]),
    body=st.binary(max_size=2048),
    route=st.sampled_from(corpus.ROUTES),
)
def test_arbitrary_bytes_never_crash(prefix: bytes, body: bytes, route: str | None) -> None:
    data = prefix + body
    ok, output, message = rh.decode_in_process(data, route, LIMIT)
    assert rh.violation(route, data, ok, output, message, limit=LIMIT) is None


# Out of process: the real CLI, exit codes, one stderr line, no traceback, RLIMIT_AS.
@pytest.mark.slow
def test_cli_mutations_exit_65_with_one_line(seeds: list[rh.Seed]) -> None:
    cases = list(rh.mutated_cases(seeds, CLI_CASES_PER_CLASS, rng_seed=2026))

    def judge(case: tuple[str, rh.Seed, bytes]) -> str | None:
        klass, seed, data = case
        outcome = rh.run_decoder(data, seed.media_type)
        problem = rh.cli_violation(outcome, seed.media_type, data, None)
        if problem is None and outcome.seconds > 10:
            problem = f"took {outcome.seconds:.1f} s"
        return None if problem is None else f"{klass} on {seed.name}: {problem}"

    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(judge, cases) if p]
    assert not problems, problems[:5]


def _bomb(image: bytes, zeros: int) -> bytes:
    """A real image followed by ``zeros`` zero bytes, as one zstd frame (a few KiB)."""
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    chunks = [image] + [bytes(1 << 24)] * (zeros >> 24)
    return cctx.compress(b"".join(chunks)) if zeros <= 1 << 26 else _stream_bomb(cctx, chunks)


def _stream_bomb(cctx: zstandard.ZstdCompressor, chunks: list[bytes]) -> bytes:
    comp = cctx.compressobj()
    return b"".join(comp.compress(c) for c in chunks) + comp.flush()


@pytest.mark.parametrize("wrap", ["zstd", "gzip"])
def test_decompression_bomb_is_refused_within_memory(seeds: list[rh.Seed], wrap: str) -> None:
    image = _by_name(seeds, "raw").data
    if wrap == "zstd":
        data, route = _bomb(image, 1 << 30), rh.ZSTD_ROUTE
    else:
        import zlib

        comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        zero = bytes(1 << 24)  # 18 x 16 MiB: just over the 256 MiB cap, fast to compress
        data = comp.compress(image) + b"".join(comp.compress(zero) for _ in range(18))
        data += comp.flush()
        route = rh.GZIP_ROUTE
    assert len(data) < 2 << 20
    outcome = rh.run_decoder(data, route, "--max-output-bytes", "256MiB", as_limit=512 << 20)
    assert outcome.exit_code == rh.EXIT_DATA, outcome.stderr
    assert "decompression bomb" in outcome.stderr
    assert len(outcome.stderr_lines) == 1


def test_huge_window_frame_is_refused(seeds: list[rh.Seed]) -> None:
    """A frame asking for a 2 GiB window is refused up front, not allocated."""
    image = _by_name(seeds, "raw").data
    params = zstandard.ZstdCompressionParameters(window_log=31, enable_ldm=True)
    comp = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = comp.compress(image) + comp.flush()  # no content size: the window descriptor rules
    assert zstandard.get_frame_parameters(data).window_size == 1 << 31
    outcome = rh.run_decoder(data, rh.ZSTD_ROUTE, as_limit=512 << 20)
    assert outcome.exit_code == rh.EXIT_DATA, outcome.stderr
    assert "window" in outcome.stderr
    assert len(outcome.stderr_lines) == 1


def _forgeries() -> list[tuple[str, int, str, int]]:
    return [
        (f"{name}={value:#x}", at, fmt, value)
        for name, at, fmt, values in rh.SUPERBLOCK_FORGERIES
        for value in values
    ]


@pytest.mark.slow
def test_forged_superblocks_never_buffer_the_stream(seeds: list[rh.Seed]) -> None:
    """Each hostile superblock field, then 768 MiB of zeros, under a 512 MiB RLIMIT_AS.

    Refused or decoded, but never by holding the stream in memory: a field
    that makes the validator wait for more bytes (a 2^40-byte "first block")
    would need more than the address space allows.
    """
    image = _by_name(seeds, "raw").data
    tail = zstandard.ZstdCompressor(level=1).compress(bytes(768 << 20))

    def judge(forgery: tuple[str, int, str, int]) -> str | None:
        label, at, fmt, value = forgery
        # One compressor per call: ZstdCompressor objects must not be shared between threads.
        head_cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
        data = head_cctx.compress(rh.forge_superblock(image, at, fmt, value)) + tail
        outcome = rh.run_decoder(data, rh.ZSTD_ROUTE, as_limit=512 << 20, stdout=subprocess.DEVNULL)
        if outcome.exit_code not in (rh.EXIT_OK, rh.EXIT_DATA) or "Traceback" in outcome.stderr:
            return f"{label}: exit {outcome.exit_code}: {outcome.stderr.strip()}"
        if outcome.exit_code == rh.EXIT_DATA and len(outcome.stderr_lines) != 1:
            return f"{label}: {outcome.stderr!r}"
        return None

    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(judge, _forgeries()) if p]
    assert not problems, problems


@pytest.mark.slow
def test_gzip_header_forgeries(seeds: list[rh.Seed]) -> None:
    """Unbounded or forged gzip header fields: refused with one line, never buffered."""
    image = _by_name(seeds, "raw").data
    problems = []
    cases = rh.gzip_header_forgeries(image)
    assert len(cases) == rh.GZIP_HEADER_FORGERIES
    for name, (data, valid) in cases.items():
        outcome = rh.run_decoder(data, rh.GZIP_ROUTE, as_limit=512 << 20, timeout=60)
        if valid:
            right = outcome.exit_code == 0 and outcome.stdout == image
        else:
            right = (
                outcome.exit_code == rh.EXIT_DATA
                and len(outcome.stderr_lines) == 1
                and outcome.seconds < 10
            )
        if not right:
            problems.append(f"{name}: exit {outcome.exit_code} {outcome.stderr!r}")
    assert not problems, problems


@pytest.mark.parametrize("threads", ["1", "2"])
def test_few_empty_frames_decode(seeds: list[rh.Seed], threads: str) -> None:
    """1 000 empty frames / members / skippable frames are legal and decode exactly."""
    image = _by_name(seeds, "raw").data
    for name, (route, data) in rh.degenerate_layers(image, 1_000).items():
        outcome = rh.run_decoder(data, route, "--threads", threads)
        assert outcome.exit_code == 0, (name, outcome.stderr)
        assert outcome.stdout == image, name


@pytest.mark.parametrize("threads", ["1", "2"])
def test_framing_bombs_are_refused_at_once(seeds: list[rh.Seed], threads: str) -> None:
    """20 000 empty frames / members / skippable frames: one line, exit 65, in well under 10 s.

    Each frame costs the decoder microseconds however little it holds (found:
    100 MB of empty frames took minutes), so beyond 4 096 frames each must
    average 4 KiB of output.
    """
    image = _by_name(seeds, "raw").data
    for name, (route, data) in rh.degenerate_layers(image, 20_000).items():
        outcome = rh.run_decoder(data, route, "--threads", threads)
        assert outcome.exit_code == rh.EXIT_DATA, (name, outcome.stderr)
        assert outcome.stderr_lines and "empty or tiny" in outcome.stderr_lines[0], name
        assert len(outcome.stderr_lines) == 1 and outcome.stdout != image, name
        assert outcome.seconds < 10, (name, outcome.seconds)


@pytest.mark.slow
def test_big_frames_on_many_threads_stay_within_memory(seeds: list[rh.Seed]) -> None:
    """A 140 KiB layer of 64 MiB zero frames must not need (threads + 1) x 64 MiB of memory.

    The default thread count is the host's CPU count, so on a large node a
    hostile multi-frame layer would otherwise claim gigabytes per decode.
    (Found by this test with --threads 8: MemoryError, exit 70; fixed in
    zstd_parallel by streaming frames that declare more than 16 MiB.)
    """
    image = _by_name(seeds, "raw").data
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    first = cctx.compress(image + bytes((64 << 20) - len(image)))
    data = first + cctx.compress(bytes(64 << 20)) * 9
    outcome = rh.run_decoder(
        data, rh.ZSTD_ROUTE, "--threads", "16", as_limit=1 << 30, stdout=subprocess.DEVNULL
    )
    assert "MemoryError" not in outcome.stderr, (
        f"exit {outcome.exit_code}: {outcome.stderr.strip()}"
    )
    assert outcome.exit_code == rh.EXIT_OK, outcome.stderr


@pytest.mark.slow
def test_atheris_short_run(seeds: list[rh.Seed], tmp_path: Path) -> None:
    """The coverage-guided fuzzer for ``FUZZ_SECONDS``: no crash, no oracle violation."""
    pytest.importorskip("atheris")
    corpus_dir = tmp_path / "corpus"
    corpus.write_corpus(corpus_dir, seeds)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = rh.run_atheris(
        corpus_dir, artifacts, FUZZ_SECONDS, tmp_path / "work", timeout=FUZZ_SECONDS + 120
    )
    found = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not found, (found, proc.stderr[-3000:])
    assert "Done" in proc.stderr
