# erofs-stream-processor: the two commands in the README are `make demo` and
# `make test`; both install what they need (system packages via
# .ci/install-deps, Python packages into .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps tools test lint bench bench-wire demo fuzz clean

install: system-deps $(STAMP)

system-deps:
	@sh .ci/install-deps

# Newer Debian packages under .tools/, privately: erofs-utils 1.8 from trixie
# (Debian 12 has 1.5, without mkfs.erofs --tar) for convert's tar builder, and
# containerd 2.1 from unstable for the <= 2.2 daemon tests. Without network
# those tests skip and say why.
tools:
	@sh .ci/fetch-erofs-utils || echo "warning: could not fetch erofs-utils 1.8; tar-builder tests will skip" >&2
	@sh .ci/fetch-containerd || echo "warning: could not fetch containerd 2.x; its tests will skip" >&2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

test: install tools
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check stream_processor tests benchmarks
	$(VENV)/bin/ruff format --check stream_processor tests benchmarks
	$(VENV)/bin/mypy

bench: install tools
	$(PY) benchmarks/run.py

bench-wire: install  # wire size by chunk size and zstd level; ~10 minutes, not in make bench
	$(PY) benchmarks/bench_wire.py

demo: install
	$(PY) tests/demo.py

fuzz: install  # 10 minutes of atheris over every route; make test runs 20 s of it
	$(PY) tests/fuzz/fuzz_decode.py -max_total_time=600 -print_final_stats=1

clean:
	rm -rf .tools $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
