# make demo | make test | make lint. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned torch first: without a pin pip pulls the newest CUDA build (several GB).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# through negflow mine and its display: a line per job, live bars on a terminal, the output at the end
demo: install
	$(BIN)/negflow mine --config config/demo.yaml --out . --cores $(CORES)
	@echo
	@echo "Negatives written to results/demo/negatives.jsonl ($$(wc -l < results/demo/negatives.jsonl) queries). First line:"
	@head -n 1 results/demo/negatives.jsonl | cut -c 1-400

# two workers, a test file each, or a test each in the files of conftest.SPLIT_BY_TEST (conftest.SLOWEST_FIRST
# sets the order): a Snakemake run's jobs wait on single-threaded imports half the time
test: install
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

lint: install
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/ruff check scripts tests bench
	$(BIN)/ruff format --check scripts tests bench

format: install
	$(BIN)/snakefmt Snakefile rules
	$(BIN)/ruff check --fix scripts tests bench
	$(BIN)/ruff format scripts tests bench

clean:
	rm -rf results resources logs benchmarks .snakemake
