"""Coverage-guided fuzzing of the decoder with atheris (libFuzzer), every route at once.

Run: ``python tests/fuzz/fuzz_decode.py [libFuzzer options] [CORPUS_DIR ...]``
(``make fuzz`` runs it for 10 minutes; ``tests/test_fuzz_properties.py`` runs it
briefly inside ``make test``). Each input is one route byte (which also picks
one or two decoder threads) plus a layer (see ``seeds.py``); it is decoded in
process, on memfds, by the product's ``decode``. A finding is any exception
other than ``DataError`` (a crash the CLI would report as "internal error",
exit 70), or a success that breaks the oracle of
``_reliability_helpers.violation`` (output not what a strict independent
decoder makes of the stream, or not a sound EROFS image/tar) or of
``table_violation`` (a seed's chunk table still present, yet a different
image out).

Half of the mutations are libFuzzer's own byte-level ones; the other half
apply the project's structural mutators (bit flips, truncation at framing
boundaries, spliced frames, forged skippable frames, chunk tables and
superblocks) to a real seed, so the fuzzer reaches deep states quickly.
Memory is bounded by ``-rss_limit_mb`` and each input by ``-timeout``.

Without a corpus directory the seeds are written to
``$EROFS_SP_FUZZ_WORK/corpus`` (default ``/tmp/erofs-sp-fuzz-UID``) and
findings go to ``.../findings/``; a finding, once triaged and fixed, is
copied into ``tests/regressions/`` and described in its ``manifest.json``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["stream_processor"]):
    # decode imports these lazily; import them here so they are instrumented too.
    pass

from tests import _reliability_helpers as rh  # noqa: E402
from tests.fuzz import seeds as corpus  # noqa: E402

LIMIT = 64 << 20  # max output per input: a bomb is refused, not decoded

SEEDS = corpus.load_seeds()
UNMUTATED = {corpus.encode(s.media_type, s.data, t): s.expected for s in SEEDS for t in (1, 2)}


class Finding(AssertionError):
    """The decoder broke the oracle on this input."""


def test_one_input(entry: bytes) -> None:
    media_type, threads, data = corpus.decode_entry(entry)
    ok, output, message = rh.decode_in_process(data, media_type, LIMIT, threads)
    problem = rh.violation(
        media_type, data, ok, output, message, limit=LIMIT, expected=UNMUTATED.get(entry)
    ) or rh.table_violation(SEEDS, data, ok, output, media_type)
    if problem is not None:
        raise Finding(f"route {media_type}: {problem}")


def custom_mutator(entry: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5 or not entry:
        return bytes(atheris.Mutate(entry, max_size))
    base = rng.choice(SEEDS)
    mutate = rng.choice(list(rh.MUTATORS.values()))
    route = base.media_type if rng.random() < 0.9 else rng.choice(corpus.ROUTES)
    threads = 2 if rng.random() < 0.5 else 1
    return corpus.encode(route, mutate(base, rng), threads)[:max_size]


def main(argv: list[str]) -> None:
    """Fill in defaults: a seed corpus, findings kept outside the tree, bounded memory."""
    args = list(argv)
    if not any(not a.startswith("-") for a in args[1:]):
        work = corpus.default_workdir()
        corpus.write_corpus(work / "corpus", SEEDS)
        args.append(str(work / "corpus"))
    if not any(a.startswith("-artifact_prefix=") for a in args):
        findings = corpus.default_workdir() / "findings"
        findings.mkdir(parents=True, exist_ok=True)
        args.insert(1, f"-artifact_prefix={findings}/")
    if not any(a.startswith("-max_len=") for a in args):
        args.insert(1, f"-max_len={2 * max(len(s.data) for s in SEEDS) + 64}")
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.insert(1, "-rss_limit_mb=1024")
    if not any(a.startswith("-timeout=") for a in args):
        args.insert(1, "-timeout=20")
    atheris.Setup(args, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
