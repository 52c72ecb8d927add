"""The ``config`` command: snippets per containerd version/differ, and ``--check``.

The routing facts behind them are docs/containerd.md section 1 (their table is tested
in test_containerd_versions.py); the real-daemon tests run generated configs on
containerd 1.6.20, 2.1.9 and (test_containerd_23.py) 2.3.
"""

from __future__ import annotations

import copy
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stream_processor import PROG, log, mediatypes
from stream_processor.containerd import (
    check,
    executable,
    names,
    render,
    versions,
)
from tests.conftest import ROOT
from tests.processor import run_cli

CONFIG_DIR = ROOT / "config"
TAR_ZSTD = mediatypes.OCI_LAYER_TAR_ZSTD
EROFS_ZSTD = mediatypes.EROFS_LAYER_ZSTD
EROFS_GZIP = mediatypes.EROFS_LAYER_GZIP
PROFILES = [(v, versions.STOCK) for v in versions.KNOWN_VERSIONS] + [
    (versions.LATEST, versions.PR12506)
]


def _options(profile: versions.Profile, tmp_path: Path, **kw: Any) -> render.SnippetOptions:
    exe = executable.Executable(sys.executable, ("-m", "stream_processor"))
    base: dict[str, Any] = {
        "profile": profile,
        "executable": exe,
        "routes": profile.default_routes(),
        "log_file": str(tmp_path / "sp.log"),
    }
    base.update(kw)
    return render.SnippetOptions(**base)


def _problems(config: dict[str, Any], profile: versions.Profile, check_path: bool = True) -> str:
    report = check.check_config(config, profile, check_path=check_path)
    return "\n".join(str(f) for f in report.problems)


# ------------------------------------------------------------------ rendering


@pytest.mark.parametrize(("version", "differ"), PROFILES)
def test_rendered_snippet_is_valid_toml_that_passes_check(
    version: str, differ: str, tmp_path: Path
) -> None:
    profile = versions.profile_for(version, differ)
    text = render.render(_options(profile, tmp_path))
    config = tomllib.loads(text)
    entry = config["stream_processors"][names.PROCESSOR_ID]
    assert entry["returns"] == mediatypes.OCI_LAYER_TAR
    assert entry["accepts"] == list(profile.default_routes())
    assert entry["path"] == sys.executable
    assert f"{log.ENV_FILE}={tmp_path / 'sp.log'}" in entry["env"]
    assert config["version"] == profile.config_version
    assert f"containerd {version}" in text  # the comment names the versions it is for
    report = check.check_config(config, profile)
    assert report.problems == [], report.render()


def test_rendered_23_snippet_has_node_settings(tmp_path: Path) -> None:
    config = tomllib.loads(
        render.render(_options(versions.profile_for("2.3"), tmp_path, platform="linux/arm64"))
    )
    plugins = config["plugins"]
    assert plugins[names.DIFF_SERVICE]["default"] == ["erofs", "walking"]
    assert plugins[names.CRI_IMAGES]["snapshotter"] == "erofs"
    # both of containerd 2.3's unpack platforms, since unpack_config replaces its defaults
    assert plugins[names.TRANSFER]["unpack_config"] == [
        {"platform": "linux/arm64", "snapshotter": "erofs", "differ": "erofs"},
        {"platform": "linux(+erofs)/arm64", "snapshotter": "erofs", "differ": "erofs"},
    ]
    assert plugins[names.TRANSFER]["max_concurrent_unpacks"] == render.MAX_CONCURRENT_UNPACKS > 1
    assert names.EROFS_DIFFER in plugins and names.EROFS_SNAPSHOTTER in plugins


def test_rendered_before_23_has_no_erofs_plugins(tmp_path: Path) -> None:
    config = tomllib.loads(render.render(_options(versions.profile_for("1.6"), tmp_path)))
    assert "plugins" not in config


@pytest.mark.parametrize("path", ['/opt/my tools/"quoted"\\erofs', "/opt/t\tab/ü/x"])
def test_render_escapes_strings(path: str, tmp_path: Path) -> None:
    opts = _options(versions.profile_for("2.3"), tmp_path, executable=executable.Executable(path))
    entry = tomllib.loads(render.render(opts))["stream_processors"][names.PROCESSOR_ID]
    assert entry["path"] == path


# ------------------------------------------------------------------ shipped files


@pytest.mark.parametrize("name", sorted(render.shipped_snippets()))
def test_shipped_snippet_matches_generator(name: str) -> None:
    assert (CONFIG_DIR / name).read_text() == render.render(render.shipped_snippets()[name])


@pytest.mark.parametrize("name", sorted(render.shipped_snippets()))
def test_shipped_snippet_passes_check_cli(name: str) -> None:
    args = ["config", "--check", str(CONFIG_DIR / name), "--skip-path-check"]
    result = run_cli([*args, *render.shipped_check_args(name)])
    assert result.returncode == 0, result.stdout.decode()
    assert result.stdout.decode().endswith("no problems found\n")
    assert result.stderr == b""


def test_shipped_snippet_path_check_names_a_missing_executable() -> None:
    if os.path.exists(render.DEFAULT_EXECUTABLE):
        pytest.skip(f"{render.DEFAULT_EXECUTABLE} is installed on this machine")
    result = run_cli(["config", "--check", str(CONFIG_DIR / "containerd-2.3-erofs.toml")])
    assert result.returncode == 1
    where = f"stream processor '{names.PROCESSOR_ID}': path {render.DEFAULT_EXECUTABLE}"
    assert f"problem: {where} does not exist" in result.stdout.decode()


def test_shipped_23_snippet_states_gzip_rejection_plainly() -> None:
    text = (CONFIG_DIR / "containerd-2.3-erofs.toml").read_text()
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())
    assert f"stock containerd 2.3 rejects {EROFS_GZIP} in its erofs differ" in flat
    assert "before any stream processor runs" in flat
    assert f"{PROG} pack" in flat


# ------------------------------------------------------------------ broken configs


def _good(tmp_path: Path) -> dict[str, Any]:
    return tomllib.loads(render.render(_options(versions.profile_for("2.3"), tmp_path)))


def _entry(config: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = config["stream_processors"][names.PROCESSOR_ID]
    return entry


def _break(name: str, config: dict[str, Any], tmp_path: Path) -> None:
    plugins = config["plugins"]
    if name == "no-stream-processors":
        del config["stream_processors"]
    elif name == "only-another-processor":
        config["stream_processors"] = {
            "io.containerd.ocicrypt.decoder.v1.tar": {
                "accepts": ["application/vnd.oci.image.layer.v1.tar+encrypted"],
                "returns": "application/vnd.oci.image.layer.v1.tar",
                "path": "/usr/local/bin/ctd-decoder",
            }
        }
    elif name == "returns-does-not-end-chain":
        _entry(config)["returns"] = TAR_ZSTD
    elif name == "accepts-erofs-zstd-on-stock":
        _entry(config)["accepts"] = [EROFS_ZSTD]
    elif name == "accepts-pattern":
        _entry(config)["accepts"] = [TAR_ZSTD, "*.erofs+zstd"]
    elif name == "accepts-unknown":
        _entry(config)["accepts"] = [TAR_ZSTD, "application/x-unknown"]
    elif name == "accepts-empty":
        _entry(config)["accepts"] = []
    elif name == "path-relative":
        _entry(config)["path"] = "erofs-stream-processor"
    elif name == "path-missing":
        _entry(config)["path"] = str(tmp_path / "nowhere" / "erofs-stream-processor")
    elif name == "path-not-executable":
        plain = tmp_path / "erofs-stream-processor"
        plain.write_text("#!/bin/sh\n")
        plain.chmod(0o644)
        _entry(config)["path"] = str(plain)
    elif name == "env-not-key-value":
        _entry(config)["env"] = ["EROFS_SP_LOG_LEVEL"]
    elif name == "log-dir-missing":
        _entry(config)["env"] = [f"EROFS_SP_LOG_FILE={tmp_path}/missing/sp.log"]
    elif name == "diff-service-without-erofs":
        del plugins[names.DIFF_SERVICE]
    elif name == "walking-before-erofs":
        plugins[names.DIFF_SERVICE]["default"] = ["walking", "erofs"]
    elif name == "no-unpack-config":
        del plugins[names.TRANSFER]
    elif name == "unpack-with-walking-differ":
        plugins[names.TRANSFER]["unpack_config"][0]["differ"] = "walking"
    elif name == "unpack-drops-erofs-feature":  # what this tool wrote before 2.3 was observed
        del plugins[names.TRANSFER]["unpack_config"][1]
    elif name == "unpack-only-erofs-feature":
        del plugins[names.TRANSFER]["unpack_config"][0]
    elif name == "cri-overlayfs":
        plugins[names.CRI_IMAGES]["snapshotter"] = "overlayfs"
    elif name == "cri-snapshotter-unset":
        del plugins[names.CRI_IMAGES]
    elif name == "config-version-2":
        config["version"] = 2
    elif name == "erofs-snapshotter-disabled":
        config["disabled_plugins"] = [names.EROFS_SNAPSHOTTER]
    elif name == "two-processors-same-route":
        config["stream_processors"]["io.example.other"] = {
            "accepts": [TAR_ZSTD],
            "returns": mediatypes.OCI_LAYER_TAR,
            "path": "/bin/cat",
        }
    else:  # pragma: no cover - a typo in the table below
        raise AssertionError(name)


BROKEN = {
    "no-stream-processors": "no stream processor is registered",
    "only-another-processor": f"{PROG} is not registered",
    "returns-does-not-end-chain": "ends containerd's processor chain",
    "accepts-erofs-zstd-on-stock": f"sends zstd EROFS layers as {TAR_ZSTD}, which no",
    "accepts-pattern": "'*.erofs+zstd' matches nothing",
    "accepts-unknown": "refuses to decode",
    "accepts-empty": "accepts is missing or empty",
    "path-relative": "is not absolute",
    "path-missing": "does not exist",
    "path-not-executable": "is not executable",
    "env-not-key-value": "is not KEY=VALUE",
    "log-dir-missing": "the log file's directory",
    "diff-service-without-erofs": 'does not list "erofs"',
    "walking-before-erofs": 'lists "walking" before "erofs"',
    "no-unpack-config": 'no unpack_config with snapshotter = "erofs"',
    "unpack-with-walking-differ": "pairs the erofs snapshotter with differ 'walking'",
    "unpack-drops-erofs-feature": "no linux(+erofs)/ARCH platform (only linux/amd64)",
    "unpack-only-erofs-feature": "no plain linux/ARCH platform with the erofs snapshotter",
    "cri-overlayfs": "Kubernetes pulls will not use EROFS",
    "cri-snapshotter-unset": "snapshotter is unset (overlayfs)",
    "config-version-2": "config version is 2",
    "erofs-snapshotter-disabled": f"{names.EROFS_SNAPSHOTTER} is in disabled_plugins",
    "two-processors-same-route": "is accepted by 2 processors",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_names_the_problem(name: str, tmp_path: Path) -> None:
    config = _good(tmp_path)
    assert _problems(copy.deepcopy(config), versions.profile_for("2.3")) == ""
    _break(name, config, tmp_path)
    problems = _problems(config, versions.profile_for("2.3"))
    assert BROKEN[name] in problems, problems


def test_check_warns_without_log_file_on_23(tmp_path: Path) -> None:
    config = _good(tmp_path)
    _entry(config)["env"] = []
    report = check.check_config(config, versions.profile_for("2.3"))
    assert report.problems == []
    assert any("discards the processor's stderr" in str(f) for f in report.findings)


def test_check_warns_about_sequential_unpacks(tmp_path: Path) -> None:
    config = _good(tmp_path)
    del config["plugins"][names.TRANSFER]["max_concurrent_unpacks"]
    report = check.check_config(config, versions.profile_for("2.3"))
    assert report.problems == []
    assert any("max_concurrent_unpacks is 1" in f.message for f in report.findings)


@pytest.mark.parametrize("kernel_has_it", [False, True])
def test_check_warns_about_enable_dmverity_without_dm_verity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_has_it: bool
) -> None:
    """Observed on 2.3.4 here (no dm_verity): the erofs differ fails to load with it set."""
    module = tmp_path / "dm_verity"
    if kernel_has_it:
        module.mkdir()
    monkeypatch.setattr(check, "DM_VERITY_MODULE", module)
    config = _good(tmp_path)
    config["plugins"][names.EROFS_DIFFER] = {"enable_dmverity": True}
    report = check.check_config(config, versions.profile_for("2.3"))
    assert report.problems == []
    warned = [f.message for f in report.findings if "enable_dmverity" in f.message]
    assert len(warned) == (0 if kernel_has_it else 1), warned
    if warned:
        assert "dm-verity support check failed" in warned[0], warned


def test_check_16_config_warns_that_only_tar_arrives(tmp_path: Path) -> None:
    config = tomllib.loads(render.render(_options(versions.profile_for("1.6"), tmp_path)))
    report = check.check_config(config, versions.profile_for("1.6"))
    assert report.problems == []
    assert any("only sees ordinary tar layers" in f.message for f in report.findings)


def test_check_pr12506_requires_erofs_route(tmp_path: Path) -> None:
    config = _good(tmp_path)  # tar+zstd only: a patched differ sends erofs+zstd instead
    problems = _problems(config, versions.profile_for("2.3", versions.PR12506))
    assert f"sends zstd EROFS layers as {EROFS_ZSTD}" in problems


# ------------------------------------------------------------------ CLI


def test_cli_prints_snippet_with_chosen_log_file_and_routes(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "sp.log"
    result = run_cli(["config", "--log-file", str(log_file), "--routes", "tar+zstd,tar+gzip"])
    assert result.returncode == 0, result.stderr
    config = tomllib.loads(result.stdout.decode())
    entry = _entry(config)
    assert entry["accepts"] == [TAR_ZSTD, mediatypes.OCI_LAYER_TAR_GZIP]
    assert f"EROFS_SP_LOG_FILE={log_file}" in entry["env"]
    assert os.path.isabs(entry["path"]) and os.access(entry["path"], os.X_OK)


def test_cli_check_fails_with_list_of_problems(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "containerd-2.3-erofs.toml").read_text()
    broken = tmp_path / "config.toml"
    broken.write_text(
        text.replace(
            'returns = "application/vnd.oci.image.layer.v1.tar"', f'returns = "{TAR_ZSTD}"'
        ).replace('default = ["erofs", "walking"]', 'default = ["walking"]')
    )
    result = run_cli(["config", "--check", str(broken), "--skip-path-check"])
    out = result.stdout.decode()
    assert result.returncode == 1
    assert out.count("problem: ") == 2, out
    assert "returns is" in out and 'does not list "erofs"' in out
    assert out.endswith("2 problems found\n")


def test_cli_refuses_gzip_route_on_stock_23_with_one_line() -> None:
    result = run_cli(["config", "--routes", "erofs+gzip"])
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "unsupported erofs layer suffix: gzip" in lines[0]


@pytest.mark.parametrize(
    ("content", "code", "words"),
    # a missing file: the code and words pack and inspect use for a missing input (issue 13)
    [(None, 2, ": no such file or directory"), ("version = = 3", 65, "is not valid TOML")],
)
def test_cli_check_unreadable_or_invalid_file(
    tmp_path: Path, content: str | None, code: int, words: str
) -> None:
    target = tmp_path / "config.toml"
    if content is not None:
        target.write_text(content)
    result = run_cli(["config", "--check", str(target)])
    assert result.returncode == code
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert "Traceback" not in result.stderr.decode()
