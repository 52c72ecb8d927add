"""Which program containerd should start: an absolute path, plus args/env when it is Python.

containerd does not share a login shell's PATH (systemd gives it a short
one), so what is registered is always absolute.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stream_processor import PROG
from stream_processor.errors import UsageError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # stream_processor/


@dataclass(frozen=True)
class Executable:
    """How containerd should start the processor: ``path`` plus leading ``args``/``env``.

    ``note`` says why this one was chosen when it is not simply what the user
    ran or named (it is printed on stderr, so nothing is registered silently).
    """

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    note: str = field(default="", compare=False)


def find_executable(explicit: str | None = None, invoked: str | None = None) -> Executable:
    """What containerd should start: ``explicit``, else what was invoked, else a search.

    ``invoked`` is ``sys.argv[0]`` of the running command: the console script
    (register that script, not another one on PATH whose shebang may name
    another venv) or ``stream_processor/__main__.py`` for ``python -m`` (register
    this interpreter). Only when it is neither is PATH searched, and the
    result carries a note saying so. When the package is not installed in the
    interpreter's own site-packages (a source checkout), PYTHONPATH is added
    so that the interpreter containerd starts can import it.
    """
    if explicit:
        return Executable(check_executable_path(explicit))
    if invoked and os.path.basename(invoked) == PROG and os.path.isfile(invoked):
        return Executable(os.path.abspath(invoked))
    if invoked and _is_this_package_main(invoked):
        return _this_interpreter()
    found = shutil.which(PROG)
    if found:
        path = os.path.abspath(found)
        return Executable(path, note=f"registering {path}, the {PROG} found on PATH")
    exe = _this_interpreter()
    return Executable(
        exe.path,
        exe.args,
        exe.env,
        note=f"registering {exe.path} -m stream_processor: no {PROG} on PATH",
    )


def check_executable_path(path: str) -> str:
    """``--path`` must be absolute: containerd resolves nothing against a shell's cwd or PATH."""
    if not os.path.isabs(path):
        raise UsageError(
            f"--path {path} is not absolute; containerd needs the full path "
            f"(e.g. {os.path.abspath(path)})"
        )
    return os.path.normpath(path)


def _is_this_package_main(invoked: str) -> bool:
    try:
        return Path(invoked).resolve() == _PACKAGE_DIR / "__main__.py"
    except OSError:
        return False


def _this_interpreter() -> Executable:
    package_parent = str(_PACKAGE_DIR.parent)
    env: tuple[str, ...] = ()
    if not any(os.path.abspath(p) == package_parent for p in _site_dirs()):
        env = (f"PYTHONPATH={package_parent}",)
    return Executable(os.path.abspath(sys.executable), ("-m", "stream_processor"), env)


def _site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    if isinstance(user, str):
        dirs.append(user)
    return dirs
