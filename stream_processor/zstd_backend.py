"""python-zstandard's C backend, loaded without the ``zstandard`` package's ``__init__``.

``import zstandard`` runs a package ``__init__`` that imports ``platform`` (and with
it ``re``) only to choose between its backends: a large share of every layer's
start-up (README "Performance"), for a choice the decode path does not need, since
it uses the C backend's classes alone. This loads that extension module from its
file with ``importlib.machinery``'s public loader API and registers it under its own
name, so that a later ``import zstandard`` (``pack``, ``inspect``) finds it there and
behaves as usual. Anything unexpected (a backend policy chosen through
``PYTHON_ZSTANDARD_IMPORT_POLICY``, a package without the C extension) falls back to
``import zstandard``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (it loads re)
if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["zstandard"]

_NAME = "zstandard.backend_c"


def _load() -> ModuleType:
    module = sys.modules.get(_NAME)
    if module is not None:
        return module
    if os.environ.get("PYTHON_ZSTANDARD_IMPORT_POLICY", "default") in ("default", "cext"):
        from importlib.machinery import (
            EXTENSION_SUFFIXES,
            ExtensionFileLoader,
            ModuleSpec,
            PathFinder,
        )

        package = PathFinder.find_spec("zstandard")
        for location in (package and package.submodule_search_locations) or ():
            for suffix in EXTENSION_SUFFIXES:
                path = os.path.join(location, "backend_c" + suffix)
                if not os.path.isfile(path):
                    continue
                loader = ExtensionFileLoader(_NAME, path)
                try:
                    module = loader.create_module(ModuleSpec(_NAME, loader, origin=path))
                    loader.exec_module(module)
                except ImportError:
                    break
                sys.modules[_NAME] = module
                return module
    import zstandard

    return zstandard


if TYPE_CHECKING:
    import zstandard
else:
    zstandard = _load()
