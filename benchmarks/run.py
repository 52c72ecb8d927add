"""`make bench`: run every ``benchmarks/bench_*.py`` in turn and collect their tables.

Each benchmark is a standalone script printing a Markdown table on stdout;
the tables are printed and also written to ``benchmarks/work/results.md``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPTIONAL = {"bench_wire.py"}  # minutes at zstd level 19: its own target, make bench-wire


def main() -> int:
    from common import installed_python

    installed_python()  # one plain install of this tree for every benchmark (see common.py)
    outputs = []
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        if script.name in OPTIONAL:
            continue
        print(f"== {script.name}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        print(proc.stdout, flush=True)
        outputs.append(proc.stdout)
        if proc.returncode != 0:
            failed += 1
            print(f"{script.name} failed with exit code {proc.returncode}", file=sys.stderr)
    (HERE / "work").mkdir(exist_ok=True)
    (HERE / "work" / "results.md").write_text("\n".join(outputs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
