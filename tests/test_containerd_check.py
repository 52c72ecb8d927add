"""``containerd.check``: levels and the report; the checks themselves are exercised in
test_containerd_config.py on broken copies of a generated snippet."""

from __future__ import annotations

from stream_processor.containerd import check, versions
from stream_processor.containerd.check import Level


def _report(*levels: Level) -> check.CheckReport:
    report = check.CheckReport("config.toml", versions.profile_for("2.3"))
    for n, level in enumerate(levels):
        report.add(level, f"finding {n}")
    return report


def test_a_finding_prints_its_level_in_words() -> None:
    assert str(check.Finding(Level.PROBLEM, "x")) == "problem: x"
    assert str(check.Finding(Level.WARNING, "x")) == "warning: x"
    assert str(check.Finding(Level.OK, "x")) == "ok: x"


def test_only_problems_count_against_a_config() -> None:
    report = _report(Level.OK, Level.WARNING, Level.PROBLEM)
    assert [f.message for f in report.problems] == ["finding 2"]
    assert report.render() == (
        "checking config.toml for containerd 2.3\n"
        "ok: finding 0\nwarning: finding 1\nproblem: finding 2\n1 problem found\n"
    )


def test_report_totals() -> None:
    assert _report(Level.WARNING).render().endswith("warning: finding 0\nno problems found\n")
    assert _report(Level.PROBLEM, Level.PROBLEM).render().endswith("2 problems found\n")


def test_is_ours_recognises_the_registration_however_it_is_named() -> None:
    assert check.is_ours("io.example.x", {"path": "/usr/bin/erofs-stream-processor"})
    assert check.is_ours(
        "io.example.x", {"path": "/usr/bin/python3", "args": ["-m", "stream_processor"]}
    )
    assert check.is_ours("io.example.x", {"accepts": ["application/vnd.erofs.layer.v1+zstd"]})
    assert not check.is_ours("io.containerd.ocicrypt.decoder.v1.tar", {"path": "/bin/ctd-decoder"})


def test_problem_count_words() -> None:
    assert _report(Level.PROBLEM).problem_count() == "1 problem"
    assert _report(Level.PROBLEM, Level.OK, Level.PROBLEM).problem_count() == "2 problems"
