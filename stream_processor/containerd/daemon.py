"""``config --check-daemon``: check what containerd really loaded, not only a file.

Imports and drop-ins (2.3's stock config imports ``/etc/containerd/conf.d/*.toml``)
change what runs, and a plugin can fail to load (the erofs differ without
``mkfs.erofs --tar``). So containerd is asked: ``containerd config dump`` for the
merged configuration, ``ctr plugins ls`` for each plugin's state; the processor's
path is checked for the user owning the daemon's socket.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream_processor.containerd.check import CheckReport, Level, check_config, is_ours
from stream_processor.containerd.configfile import parse_config
from stream_processor.containerd.versions import Profile
from stream_processor.errors import DataError, UsageError, no_such_file

TIMEOUT = 60.0
EROFS_PLUGINS = (("io.containerd.snapshotter.v1", "erofs"), ("io.containerd.differ.v1", "erofs"))


def _binary(name: str, explicit: str | None) -> str:
    if explicit:
        if not os.path.isfile(explicit):
            raise no_such_file(explicit)
        return explicit
    found = shutil.which(name)
    if not found:
        raise UsageError(f"{name} is not on PATH; name it with --containerd PATH")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run {' '.join(argv)}: {exc}") from exc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def dump_config(containerd: str | None, config_file: str | None) -> tuple[str, dict[str, Any]]:
    """(the command run, the effective config) from ``containerd [--config F] config dump``."""
    binary = _binary("containerd", containerd)
    if config_file is not None and not os.path.exists(config_file):
        raise no_such_file(config_file)
    argv = [binary, *(["--config", config_file] if config_file else []), "config", "dump"]
    done = _run(argv)
    command = " ".join(argv)
    if done.returncode != 0:
        raise DataError(f"{command} failed: {_last_line(done.stderr)}")
    return command, parse_config(done.stdout, f"the output of {command}")


@dataclass(frozen=True)
class PluginState:
    type: str
    id: str
    status: str
    reason: str = ""


def plugin_states(ctr: str, address: str) -> dict[tuple[str, str], PluginState]:
    """``ctr plugins ls`` as (type, id) -> state; a failed plugin's reason from ``--detailed``."""
    table = _run([ctr, "--address", address, "plugins", "ls"])
    if table.returncode != 0:
        raise DataError(f"ctr --address {address} plugins ls failed: {_last_line(table.stderr)}")
    states: dict[tuple[str, str], PluginState] = {}
    for line in table.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            states[(fields[0], fields[1])] = PluginState(fields[0], fields[1], fields[-1])
    for key in EROFS_PLUGINS:
        state = states.get(key)
        if state is not None and state.status != "ok":
            states[key] = PluginState(*key, state.status, _reason(ctr, address, key))
    return states


def _reason(ctr: str, address: str, key: tuple[str, str]) -> str:
    """The error message ``ctr plugins ls --detailed`` prints for one plugin, if any.

    Its shape (2.3.4): an ``Error:`` line, then indented ``Code:`` and
    ``Message:`` lines; the message is what containerd says, e.g. "mkfs.erofs
    does not support tar mode (--tar option), disabling erofs differ: skip plugin".
    """
    done = _run(
        [ctr, "--address", address, "plugins", "ls", "--detailed", f"type=={key[0]},id=={key[1]}"]
    )
    lines = [line.strip() for line in done.stdout.splitlines()]
    if "Error:" not in lines:
        return ""
    for line in lines[lines.index("Error:") + 1 :]:
        if line.startswith("Message:"):
            return line[len("Message:") :].strip()
    return ""


def check_plugins(states: Mapping[tuple[str, str], PluginState], report: CheckReport) -> None:
    for key in EROFS_PLUGINS:
        name = f"{key[0]} {key[1]}"
        state = states.get(key)
        if state is None:
            report.add(
                Level.PROBLEM, f"the daemon has no plugin {name} (containerd older than 2.1?)"
            )
        elif state.status == "ok":
            report.add(Level.OK, f"the daemon loaded {name}")
        else:
            why = f": {state.reason}" if state.reason else ""
            report.add(
                Level.PROBLEM, f"the daemon did not load {name} (status {state.status}){why}"
            )


# ---------------------------------------------------------------- the daemon's user


@dataclass(frozen=True)
class Credentials:
    uid: int
    gids: frozenset[int]
    source: str  # how they were found, for the report


def socket_owner(address: str) -> Credentials:
    """The user of the process listening on unix socket ``address``, else root (said so)."""
    pid = _listening_pid(os.path.abspath(address))
    if pid is not None:
        status = _proc_status(pid)
        try:
            uid = int(status["Uid"].split()[1])  # effective
            gids = {int(status["Gid"].split()[1]), *map(int, status.get("Groups", "").split())}
            return Credentials(uid, frozenset(gids), f"containerd (pid {pid}, uid {uid})")
        except (KeyError, IndexError, ValueError):
            pass
    return Credentials(0, frozenset({0}), "root (the process owning the socket was not found)")


def _listening_pid(path: str) -> int | None:
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as fh:
            rows = [line.split() for line in fh.read().splitlines()[1:]]
    except OSError:
        return None
    inodes = {row[6] for row in rows if len(row) >= 8 and row[7] == path}
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            for fd in os.listdir(fd_dir):
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    return int(entry)
        except OSError:
            continue  # gone, or not ours to read
    return None


def _proc_status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            pairs = (line.split(":", 1) for line in fh if ":" in line)
            return {k: v.strip() for k, v in pairs}
    except OSError:
        return {}


def can_execute(path: str, who: Credentials) -> bool:
    """Would ``who`` be allowed to execute ``path`` (permission bits of the file itself)?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if who.uid == 0:
        return bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in who.gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def check_processor_paths(config: Mapping[str, Any], who: Credentials, report: CheckReport) -> None:
    processors = config.get("stream_processors")
    if not isinstance(processors, dict):
        return
    for pid, entry in processors.items():
        if not (isinstance(entry, dict) and is_ours(pid, entry)):
            continue
        path = entry.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            continue  # the file check already reported it
        if can_execute(path, who):
            report.add(Level.OK, f"stream processor {pid!r}: {who.source} can execute {path}")
        else:
            report.add(
                Level.PROBLEM, f"stream processor {pid!r}: {who.source} cannot execute {path}"
            )


def check_daemon(
    profile: Profile,
    containerd: str | None = None,
    config_file: str | None = None,
    address: str | None = None,
    check_path: bool = True,
) -> CheckReport:
    """Check the effective config; with ``address`` also the running daemon's plugins."""
    command, config = dump_config(containerd, config_file)
    report = check_config(config, profile, source=f"`{command}`", check_path=check_path)
    if address is None:
        return report
    if not os.path.exists(address):
        raise no_such_file(address)
    address = os.path.abspath(address)  # ctr reads a relative one as a URL authority
    ctr_next_to = os.path.join(os.path.dirname(containerd), "ctr") if containerd else None
    ctr = ctr_next_to if ctr_next_to and os.path.isfile(ctr_next_to) else _binary("ctr", None)
    if profile.erofs_plugins:
        check_plugins(plugin_states(ctr, address), report)
    if check_path:
        check_processor_paths(config, socket_owner(address), report)
    return report
