# pyvirt: the two commands are `make demo` and `make test`; both install what they need.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PYTEST    := $(VENV)/bin/pytest
SYSPY     ?= /usr/bin/python3
STAMP     := $(VENV)/.installed

.PHONY: setup test test-fast lint demo guest clean bench bench-quick fuzz

setup: $(STAMP)
	@bash tools/setup-host.sh

# The venv is rebuilt when the package's metadata changes.
$(STAMP): pyproject.toml
	@bash tools/setup-host.sh
	@test -x $(PY) || $(SYSPY) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: setup
	$(VENV)/bin/pyvirt-lab guest build
	$(PYTEST) -q

test-fast: setup
	$(PYTEST) -q -m "not qemu"

lint: setup
	$(VENV)/bin/ruff check pyvirt tests bench
	$(VENV)/bin/mypy

guest: setup
	$(VENV)/bin/pyvirt-lab guest build

demo: setup
	$(PY) -m pyvirt.lab.demo

# Migration benchmark, pyvirt against raw QEMU (bench/README.md); results in bench/results/.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml $(STAMP)
	@$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

bench: setup $(BENCH_STAMP)
	$(PY) -m bench.migrate

bench-quick: setup $(BENCH_STAMP)
	$(PY) -m bench.migrate --quick

# Structured wire fuzzer against an isolated pyvirtd (tests/fuzz); FUZZ_SEED replays a run.
FUZZ_SECONDS ?= 600

fuzz: setup
	$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

clean:
	rm -rf $(VENV) build *.egg-info
