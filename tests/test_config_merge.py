"""``config --merge`` and ``--check-daemon`` (issue 14) on real-world-shaped configs.

The stock files are containerd's own ``containerd config default`` output:
Debian's 1.6 (system ``containerd``), the fetched 2.1 (``.tools/containerd``) and
2.3 where ``EROFS_SP_CONTAINERD23_BIN`` names one. Each merge is checked with
tomllib (exactly the intended keys changed, every other key and every comment
line kept), with ``config --check``, and by starting the real daemon on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from stream_processor.containerd import (
    check,
    configfile,
    executable,
    names,
    platforms,
    render,
    versions,
)
from stream_processor.containerd import merge as cm
from tests.builders import DISABLED_PLUGINS, write_wrapper
from tests.conftest import ROOT, tar_mode_mkfs
from tests.daemon_helpers import BIN_ENV, stop_daemon, wait_until_ready
from tests.daemon_helpers import CONTAINERD_21_BIN as BIN_21
from tests.processor import run_cli

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root")
HOST = platforms.host_platform()
PLUGIN_KEYS = {
    ("plugins", names.CRI_IMAGES, "snapshotter"),
    ("plugins", names.DIFF_SERVICE, "default"),
    ("plugins", names.TRANSFER, "max_concurrent_unpacks"),
    ("plugins", names.TRANSFER, "unpack_config"),
    ("plugins", names.EROFS_DIFFER),
    ("plugins", names.EROFS_SNAPSHOTTER),
}

HAND_WRITTEN = """\
# Node config, managed by hand. Keep this comment.
version = 3
root = "/var/lib/containerd"  # trailing comment

[plugins]
  # GC tuned for this node
  [plugins."io.containerd.gc.v1.scheduler"]
    pause_threshold = 0.05

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false

  [plugins."io.containerd.transfer.v1.local"]
    max_concurrent_downloads = 5  # bandwidth-limited site
    [[plugins."io.containerd.transfer.v1.local".unpack_config]]
      platform = "linux/arm64"
      snapshotter = "overlayfs"

[stream_processors]
  # an old registration of ours, with a stale path
  [stream_processors."io.containerd.processor.v1.erofs"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+zstd"]
    returns = "application/vnd.oci.image.layer.v1.tar"
    path = "/opt/old/erofs-stream-processor"

  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+encrypted"]
    returns = "application/vnd.oci.image.layer.v1.tar"
    path = "ctd-decoder"
"""

CONFLICTING = """\
version = 3
disabled_plugins = ["io.containerd.snapshotter.v1.erofs"]

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "native"

  [plugins."io.containerd.service.v1.diff-service"]
    default = ["walking", "erofs"]
"""


# ---------------------------------------------------------------- helpers


def flat(node: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf key path -> value (arrays of tables are leaves)."""
    if isinstance(node, dict) and node:
        out: dict[tuple[str, ...], Any] = {}
        for key, value in node.items():
            out.update(flat(value, (*prefix, key)))
        return out
    return {prefix: node}


def intended(path: tuple[str, ...], profile: versions.Profile) -> bool:
    if path[:2] == ("stream_processors", names.PROCESSOR_ID) or path == ("version",):
        return True
    return profile.erofs_plugins and any(path[: len(k)] == k for k in PLUGIN_KEYS)


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "#" in line and "=" not in line]


def merge_args(path: Path, version: str, exe: Path, log: Path) -> list[str]:
    return ["config", "--merge", str(path), "--containerd-version", version,
            "--path", str(exe), "--log-file", str(log)]  # fmt: skip


def assert_merged(before: str, after: str, profile: versions.Profile) -> None:
    """Only the registration's keys changed; every other key and comment line survived."""
    old, new = flat(tomllib.loads(before)), flat(tomllib.loads(after))
    for path, value in old.items():
        if not intended(path, profile):
            assert new.get(path) == value, path
    added = {p for p in new if p not in old}
    assert all(intended(p, profile) for p in added), added
    missing = [c for c in comment_lines(before) if c not in after]
    assert not missing, missing
    entry = tomllib.loads(after)["stream_processors"][names.PROCESSOR_ID]
    assert entry["returns"] == "application/vnd.oci.image.layer.v1.tar"


def one_error(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("erofs-stream-processor: ")
    assert "Traceback" not in lines[0]
    return lines[0]


# ---------------------------------------------------------------- unit


def test_line_of_finds_keys_in_any_quoting_and_nth_table() -> None:
    assert cm.line_of(HAND_WRITTEN, ("plugins", names.TRANSFER), "max_concurrent_downloads") == 14
    assert cm.line_of(HAND_WRITTEN, ("plugins", "io.containerd.cri.v1.runtime")) == 10
    assert cm.line_of(HAND_WRITTEN, ("plugins", names.TRANSFER, "unpack_config"), "platform") == 16
    assert cm.line_of(HAND_WRITTEN, ("plugins",), "nothing") is None


def _opts(profile: versions.Profile) -> render.SnippetOptions:
    return render.SnippetOptions(
        profile, executable.Executable(sys.executable), profile.default_routes(), platform=HOST
    )


def test_merge_into_empty_file_gives_the_snippet_and_is_idempotent() -> None:
    result = cm.merge("# a new node\n", _opts(versions.profile_for("2.3")))
    assert tomllib.loads(result.after) == tomllib.loads(
        render.render(_opts(versions.profile_for("2.3")))
    )
    again = cm.merge(result.after, _opts(versions.profile_for("2.3")))
    assert not again.changed and again.changes == []


def test_containerd_defaults_are_not_conflicts_but_operator_values_are() -> None:
    stock = (
        'version = 3\n[plugins."io.containerd.service.v1.diff-service"]\n  default = ["walking"]\n'
    )
    result = cm.merge(stock, _opts(versions.profile_for("2.3")))
    assert tomllib.loads(result.after)["plugins"][names.DIFF_SERVICE]["default"] == [
        "erofs",
        "walking",
    ]
    with pytest.raises(cm.MergeConflict) as caught:
        cm.merge(CONFLICTING, _opts(versions.profile_for("2.3")))
    text = caught.value.message
    assert caught.value.exit_code == 1
    assert "line 2: disabled_plugins" in text and "line 6:" in text and "line 9:" in text
    forced = tomllib.loads(
        cm.merge(CONFLICTING, _opts(versions.profile_for("2.3")), force=True).after
    )
    assert forced["plugins"][names.DIFF_SERVICE]["default"] == ["erofs", "walking"]
    assert forced["plugins"][names.CRI_IMAGES]["snapshotter"] == "erofs"
    assert forced["disabled_plugins"] == []


def test_more_parallel_unpacks_than_needed_are_kept() -> None:
    text = (
        'version = 3\n[plugins."io.containerd.transfer.v1.local"]\n  max_concurrent_unpacks = 8\n'
    )
    after = tomllib.loads(cm.merge(text, _opts(versions.profile_for("2.3"))).after)
    assert after["plugins"][names.TRANSFER]["max_concurrent_unpacks"] == 8


# ---------------------------------------------------------------- through the CLI


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config path, processor executable, log file) in a private directory."""
    exe = write_wrapper(tmp_path / "bin")
    return tmp_path / "etc" / "config.toml", exe, tmp_path / "processor.log"


def test_merge_hand_written_config_keeps_everything_else(node: tuple[Path, Path, Path]) -> None:
    config, exe, log = node
    config.parent.mkdir()
    config.write_text(HAND_WRITTEN)
    result = run_cli(merge_args(config, "2.3", exe, log))
    assert result.returncode == 0, result.stderr
    after = config.read_text()
    assert_merged(HAND_WRITTEN, after, versions.profile_for("2.3"))
    doc = tomllib.loads(after)
    assert doc["stream_processors"][names.PROCESSOR_ID]["path"] == str(exe)
    unpack = doc["plugins"][names.TRANSFER]["unpack_config"]
    assert unpack[0] == {"platform": "linux/arm64", "snapshotter": "overlayfs"}  # not ours
    assert {u["platform"] for u in unpack[1:]} == {HOST, platforms.erofs_platform(HOST)}
    assert (config.parent / "config.toml.bak").read_text() == HAND_WRITTEN
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.toml", "config.toml.bak"]
    check = run_cli(["config", "--check", str(config), "--containerd-version", "2.3"])
    assert check.returncode == 0, check.stdout.decode()
    again = run_cli(merge_args(config, "2.3", exe, log))
    assert again.returncode == 0
    assert b"nothing changed" in again.stdout
    assert config.read_text() == after
    assert (config.parent / "config.toml.bak").read_text() == HAND_WRITTEN


def test_dry_run_prints_a_diff_and_writes_nothing(node: tuple[Path, Path, Path]) -> None:
    config, exe, log = node
    config.parent.mkdir()
    config.write_text(HAND_WRITTEN)
    result = run_cli([*merge_args(config, "2.3", exe, log), "--dry-run"])
    assert result.returncode == 0
    out = result.stdout.decode()
    assert out.startswith(f"--- {config}\n+++ {config} (merged)\n")
    assert '+    snapshotter = "erofs"' in out
    assert config.read_text() == HAND_WRITTEN
    assert [p.name for p in config.parent.iterdir()] == ["config.toml"]


def test_backup_suffix_and_force(node: tuple[Path, Path, Path]) -> None:
    config, exe, log = node
    config.parent.mkdir()
    config.write_text(CONFLICTING)
    result = run_cli([*merge_args(config, "2.3", exe, log), "--force", "--backup", ".orig"])
    assert result.returncode == 0, result.stderr
    assert b"forced: line 6:" in result.stdout
    assert (config.parent / "config.toml.orig").read_text() == CONFLICTING
    check = run_cli(["config", "--check", str(config), "--containerd-version", "2.3"])
    assert check.returncode == 0, check.stdout.decode()


@pytest.mark.parametrize(
    ("content", "extra", "code", "words"),
    [
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n',
            [],
            65,
            "containerd config migrate",
        ),
        ('root = "/var/lib/containerd"\n', [], 65, "version 1 config"),
        (
            "version = 3\n[plugins\n",
            [],
            65,
            "is not valid TOML: Expected ']' at the end of a table declaration "
            "(at line 2, column 9)",
        ),
        ('version = 4\nroot = "/x"\n', ["--containerd-version", "2.1"], 65, "newer than"),
        (CONFLICTING, [], 1, "3 settings differ from what the registration needs"),
        (HAND_WRITTEN, ["--backup", "a/b"], 2, "--backup needs a file name suffix"),
        (HAND_WRITTEN, ["--platform", "bogus"], 2, "--platform 'bogus' is not a Linux platform"),
        (HAND_WRITTEN, ["--path", "relative/bin"], 2, "--path relative/bin is not absolute"),
        (HAND_WRITTEN, ["--check", "x.toml"], 2, "not allowed with argument"),
        (
            HAND_WRITTEN,
            ["--path", "/nonexistent/sp"],
            1,
            "would not pass --check after merging (1 problem: stream processor "
            f"'{names.PROCESSOR_ID}': path /nonexistent/sp does not exist); nothing written",
        ),
        (HAND_WRITTEN, ["--address", "/run/x.sock"], 2, "--address cannot be used without"),
    ],
)
def test_merge_refusals_leave_the_file_alone(
    tmp_path: Path, content: str, extra: list[str], code: int, words: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    log = tmp_path / "p.log"
    args = ["config", "--merge", str(config), "--log-file", str(log), "--path", sys.executable]
    if "--path" in extra:
        args = args[:-2]
    result = run_cli([*args, *extra])
    assert result.returncode == code, result.stderr
    assert words in one_error(result)
    assert config.read_text() == content
    assert [p.name for p in tmp_path.iterdir() if p.name != "p.log"] == ["config.toml"]


def test_conflict_error_names_each_conflict_and_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFLICTING)
    result = run_cli(["config", "--merge", str(config), "--path", sys.executable])
    line = one_error(result)
    assert "line 2: disabled_plugins" in line
    assert '[plugins."io.containerd.cri.v1.images"] snapshotter = "native" -> "erofs"' in line
    assert 'line 9: [plugins."io.containerd.service.v1.diff-service"] default' in line
    assert "--force" in line


def test_merge_missing_file_is_a_usage_error_like_pack(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for args in (["config", "--merge", str(missing)], ["config", "--check", str(missing)]):
        result = run_cli(args)
        assert result.returncode == 2
        assert one_error(result) == f"erofs-stream-processor: {missing}: no such file or directory"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--routes", "tar+zstd"], "--routes cannot be used with --check"),
        (["--path", "/usr/bin/x", "--log-level", "info"], "--path, --log-level cannot be used"),
        (["--platform", "linux/amd64"], "--platform cannot be used with --check"),
        (["--dry-run"], "--dry-run cannot be used without --merge"),
    ],
)
def test_check_refuses_generation_options(tmp_path: Path, extra: list[str], words: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(render.render(_opts(versions.profile_for("2.3"))))
    result = run_cli(["config", "--check", str(config), *extra])
    assert result.returncode == 2
    assert words in one_error(result)
    assert result.stdout == b""


def test_generation_refuses_bad_platform_and_relative_path() -> None:
    for args, words in (
        (["--platform", "bogus"], "is not a Linux platform"),
        (["--platform", "linux/amd65"], "is not a Linux platform"),
        (["--path", "relative/bin"], "is not absolute"),
    ):
        result = run_cli(["config", *args])
        assert result.returncode == 2
        assert words in one_error(result)
        assert result.stdout == b""


def test_config_registers_the_script_it_was_started_as(tmp_path: Path) -> None:
    """A console script run by absolute path registers itself, not another found on PATH."""
    script = tmp_path / "venv" / "bin" / "erofs-stream-processor"
    script.parent.mkdir(parents=True)
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from stream_processor.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    other = tmp_path / "other"
    other.mkdir()
    (other / "erofs-stream-processor").write_text("#!/bin/sh\n")
    (other / "erofs-stream-processor").chmod(0o755)
    env = {**os.environ, "PATH": f"{other}:{os.environ['PATH']}"}
    result = subprocess.run([str(script), "config"], capture_output=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    entry = tomllib.loads(result.stdout.decode())["stream_processors"][names.PROCESSOR_ID]
    assert entry["path"] == str(script)
    assert result.stderr == b""


# ---------------------------------------------------------------- stock configs, real daemons


def _bin23() -> Path | None:
    value = os.environ.get(BIN_ENV)
    return Path(value) if value and (Path(value) / "containerd").is_file() else None


def stock_binaries() -> list[Any]:
    return [
        pytest.param("1.6", lambda: Path(shutil.which("containerd") or "containerd"), id="1.6"),
        pytest.param("2.1", lambda: BIN_21 / "containerd", id="2.1"),
        pytest.param("2.3", lambda: (_bin23() or Path("/nonexistent")) / "containerd", id="2.3"),
    ]


def privatize(text: str, base: Path) -> str:
    """The stock file with a private root, state and sockets, and no CRI/NRI (as the other
    daemon tests run): edited with tomlkit so the file stays the stock one otherwise."""
    doc = tomlkit.parse(text)
    doc["root"], doc["state"] = str(base / "root"), str(base / "state")
    if "imports" in doc:
        doc["imports"] = []
    disabled = [*DISABLED_PLUGINS, "io.containerd.nri.v1.nri"]
    if doc["version"] != 2:
        disabled += ["io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
    doc["disabled_plugins"] = disabled
    if doc["version"] == 4:
        plugins: Any = doc["plugins"]
        plugins["io.containerd.server.v1.grpc"]["address"] = str(base / "c.sock")
        plugins["io.containerd.server.v1.ttrpc"]["address"] = str(base / "c.sock.ttrpc")
    else:
        grpc: Any = doc["grpc"]
        ttrpc: Any = doc["ttrpc"]
        grpc["address"], ttrpc["address"] = str(base / "c.sock"), str(base / "c.sock.ttrpc")
    return tomlkit.dumps(doc)


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sp-m-"))  # short: unix socket paths are limited
    try:
        yield path
    finally:
        subprocess.run(["umount", "-R", str(path / "state")], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


@ROOT_ONLY
@pytest.mark.daemon
@pytest.mark.parametrize(("version", "binary"), stock_binaries())
def test_merge_into_stock_config_then_the_daemon_starts(
    version: str, binary: Any, base: Path
) -> None:
    containerd: Path = binary()
    if not containerd.is_file():
        pytest.skip(f"no containerd {version} here ({containerd})")
    stock = subprocess.run(
        [str(containerd), "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    config = base / "config.toml"
    before = privatize(stock, base)
    config.write_text(before)
    exe = write_wrapper(base / "bin")
    result = run_cli(merge_args(config, version, exe, base / "processor.log"))
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    after = config.read_text()
    profile = versions.profile_for(version)
    assert_merged(before, after, profile)
    check = run_cli(["config", "--check", str(config), "--containerd-version", version])
    assert check.returncode == 0, check.stdout.decode()
    again = run_cli(merge_args(config, version, exe, base / "processor.log"))
    assert again.returncode == 0 and b"nothing changed" in again.stdout
    mkfs = Path(tar_mode_mkfs())
    env = {**os.environ, "PATH": f"{mkfs.parent}:{containerd.parent}:{os.environ['PATH']}"}
    ctr = containerd.parent / "ctr"
    socket = base / "c.sock"

    def ready() -> bool:
        done = subprocess.run(
            [str(ctr), "--address", str(socket), "version"], capture_output=True, check=False
        )
        return socket.exists() and done.returncode == 0

    with open(base / "daemon.log", "wb") as out:
        proc = subprocess.Popen(
            [str(containerd), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        problem = wait_until_ready(proc, ready, base / "daemon.log", 30.0)
        assert problem is None, problem
        daemon_check = run_cli(
            ["config", "--check-daemon", "--containerd", str(containerd),
             "--daemon-config", str(config), "--address", str(socket),
             "--containerd-version", version],
            env={"PATH": env["PATH"]},
        )  # fmt: skip
        report = daemon_check.stdout.decode()
        assert daemon_check.returncode == 0, report + daemon_check.stderr.decode()
        assert f"containerd (pid {proc.pid}, uid 0) can execute {exe}" in report
        if profile.erofs_plugins:
            assert "ok: the daemon loaded io.containerd.snapshotter.v1 erofs" in report
            assert "ok: the daemon loaded io.containerd.differ.v1 erofs" in report
    finally:
        stop_daemon(proc)
    # and back: the backup is the file as it was
    os.replace(base / "config.toml.bak", config)
    assert config.read_text() == before


# ---------------------------------------------------------------- --check-daemon pieces


def test_can_execute_follows_the_daemons_user(tmp_path: Path) -> None:
    from stream_processor.containerd import daemon as cd

    exe = tmp_path / "p"
    exe.write_text("#!/bin/sh\n")
    st = exe.stat()
    root = cd.Credentials(0, frozenset({0}), "root")
    owner = cd.Credentials(st.st_uid, frozenset({st.st_gid}), "owner")
    stranger = cd.Credentials(54321, frozenset({54321}), "stranger")
    exe.chmod(0o700)
    assert cd.can_execute(str(exe), root) and cd.can_execute(str(exe), owner)
    assert not cd.can_execute(str(exe), stranger)
    exe.chmod(0o701)
    assert cd.can_execute(str(exe), stranger)
    exe.chmod(0o600)
    assert not cd.can_execute(str(exe), root)
    assert not cd.can_execute(str(tmp_path), root)  # a directory is not a processor


def test_socket_without_a_listener_falls_back_to_root_and_says_so(tmp_path: Path) -> None:
    from stream_processor.containerd import daemon as cd

    who = cd.socket_owner(str(tmp_path / "none.sock"))
    assert who.uid == 0 and "not found" in who.source


def test_check_daemon_refusals_are_one_line_usage_errors(tmp_path: Path) -> None:
    for args, words in (
        (["--containerd", str(tmp_path / "nope")], f"{tmp_path}/nope: no such file or directory"),
        (["--routes", "tar+zstd"], "--routes cannot be used with --check-daemon"),
    ):
        result = run_cli(["config", "--check-daemon", *args])
        assert result.returncode == 2
        assert one_error(result) == f"erofs-stream-processor: {words}" or words in one_error(result)


@ROOT_ONLY
@pytest.mark.daemon
def test_check_daemon_reports_a_skipped_erofs_differ_with_containerds_reason(base: Path) -> None:
    """2.3 without mkfs.erofs on its PATH: the differ is `skip`; --check-daemon says why."""
    bin23 = _bin23()
    if bin23 is None:
        pytest.skip(f"{BIN_ENV} is not set: no containerd 2.3 here")
    containerd = bin23 / "containerd"
    stock = subprocess.run(
        [str(containerd), "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    config = base / "config.toml"
    config.write_text(privatize(stock, base))
    exe = write_wrapper(base / "bin")
    assert run_cli(merge_args(config, "2.3", exe, base / "p.log")).returncode == 0
    socket = base / "c.sock"
    empty = base / "empty-bin"  # no mkfs.erofs at all
    empty.mkdir()
    with open(base / "daemon.log", "wb") as out:
        proc = subprocess.Popen(
            [str(containerd), "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"PATH": f"{empty}:{bin23}"},
        )  # fmt: skip
    try:
        ctr = [str(bin23 / "ctr"), "--address", str(socket), "version"]
        problem = wait_until_ready(
            proc,
            lambda: subprocess.run(ctr, capture_output=True, check=False).returncode == 0,
            base / "daemon.log",
            30.0,
        )
        assert problem is None, problem
        result = run_cli(
            ["config", "--check-daemon", "--containerd", str(containerd),
             "--daemon-config", str(config), "--address", str(socket)]
        )  # fmt: skip
        report = result.stdout.decode()
        assert result.returncode == 1, report
        skipped = [
            line
            for line in report.splitlines()
            if "did not load io.containerd.differ.v1 erofs" in line
        ]
        assert skipped and skipped[0].startswith("problem: "), report
        assert "(status skip): " in skipped[0] and "mkfs.erofs" in skipped[0], skipped
        assert "ok: the daemon loaded io.containerd.snapshotter.v1 erofs" in report
    finally:
        stop_daemon(proc)


def test_sigterm_while_writing_leaves_the_config_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream_processor.errors import Terminated

    config = tmp_path / "config.toml"
    config.write_text(HAND_WRITTEN)

    def killed(src: str, dst: str) -> None:
        os.kill(os.getpid(), 15)  # arrives after both temporaries are staged

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Terminated):
        configfile.write(str(config), HAND_WRITTEN, HAND_WRITTEN + "# changed\n")
    assert config.read_text() == HAND_WRITTEN
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_another_processor_on_our_route_is_a_conflict() -> None:
    text = (
        "version = 2\n"
        '[stream_processors."example.other"]\n'
        '  accepts = ["application/vnd.oci.image.layer.v1.tar+zstd", "x/y"]\n'
        '  returns = "application/vnd.oci.image.layer.v1.tar"\n'
        '  path = "/usr/bin/other"\n'
    )
    with pytest.raises(cm.MergeConflict, match=r'line 3: \[stream_processors\."example\.other"\]'):
        cm.merge(text, _opts(versions.profile_for("1.6")))
    forced = tomllib.loads(cm.merge(text, _opts(versions.profile_for("1.6")), force=True).after)
    assert forced["stream_processors"]["example.other"]["accepts"] == ["x/y"]


def test_unpack_entry_for_this_platform_with_another_snapshotter_is_a_conflict() -> None:
    text = (
        "version = 3\n"
        '[plugins."io.containerd.transfer.v1.local"]\n'
        '  [[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
        '    platform = "linux/arm64"\n'
        '    snapshotter = "erofs"\n'
        '  [[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
        f"    platform = {configfile.toml_string(HOST)}\n"
        '    snapshotter = "overlayfs"\n'
    )
    with pytest.raises(cm.MergeConflict, match=f"line 8: .*unpack_config]] for {HOST}"):
        cm.merge(text, _opts(versions.profile_for("2.3")))
    forced = tomllib.loads(cm.merge(text, _opts(versions.profile_for("2.3")), force=True).after)
    unpack = forced["plugins"][names.TRANSFER]["unpack_config"]
    assert unpack[1] == {"platform": HOST, "snapshotter": "erofs", "differ": "erofs"}
    assert len(unpack) == 3  # arm64 kept, HOST fixed, the +erofs twin added


def test_config_from_elsewhere_says_on_stderr_what_it_registered(tmp_path: Path) -> None:
    """Neither the script nor ``-m``: PATH is searched, and stderr says what was registered."""
    code = "import sys; from stream_processor.cli import main; sys.exit(main(['config']))"
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path, check=False
    )
    assert result.returncode == 0
    assert result.stderr.decode() == (
        f"erofs-stream-processor: registering {os.path.abspath(sys.executable)} -m "
        "stream_processor: no erofs-stream-processor on PATH\n"
    )


@pytest.mark.parametrize(("version", "file_version", "ok"), [("2.3", 4, True), ("2.3", 3, True),
                         ("2.1", 4, False), ("2.3", 2, False)])  # fmt: skip
def test_check_accepts_the_config_versions_each_containerd_reads(
    version: str, file_version: int, ok: bool
) -> None:
    profile = versions.profile_for(version)
    config = tomllib.loads(render.render(_opts(profile)))
    config["version"] = file_version
    problems = [f.message for f in check.check_config(config, profile).problems]
    assert (not any("config version" in p for p in problems)) is ok, problems
