# erofs-stream-processor: the two commands in the README are `make demo` and
# `make test`; both install what they need (system packages via
# .ci/install-deps, Python packages into .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps test lint bench demo fuzz clean

install: system-deps $(STAMP)

system-deps:
	@sh .ci/install-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check stream_processor tests benchmarks
	$(VENV)/bin/ruff format --check stream_processor tests benchmarks
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/run.py

demo: install
	$(PY) -m stream_processor.demo

fuzz: install  # 10 minutes of atheris over every route; make test runs 20 s of it
	$(PY) tests/fuzz/fuzz_decode.py -max_total_time=600 -print_final_stats=1

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
