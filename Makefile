# Two entry points: `make run` (the XOR reproduction, quick setting) and `make test`.
# Each creates .venv on first use and installs the package with what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,lightning,search]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/infdepth xor --quick --out runs/xor-quick --overwrite

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
