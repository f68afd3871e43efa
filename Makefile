# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv and installs everything (.[all,test]); torch is pinned to the CPU build on this disk.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: setup demo test bench clean

$(BIN)/adaptjobs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $@

setup: $(BIN)/adaptjobs

demo: setup
	$(BIN)/python -m adaptjobs.demo

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_codec.py --out benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_adapt.py --out benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_runner.py --out benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache demo-output
