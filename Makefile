# swag: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= demo-out

.PHONY: setup demo test test-fast bench findings clean

setup: $(VENV)/.swag-installed

$(VENV)/.swag-installed: pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m swagcli.wordnet install
	$(BIN)/python -m swagcli.prep.jsonscan
	touch $@

demo: setup
	$(BIN)/swag demo --out $(OUT)

test: setup
	bash scripts/system-deps.sh --test
	$(BIN)/python -m pytest -q

findings: setup
	$(BIN)/swag findings --out findings-out --report docs/findings

bench: setup
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(OUT) findings-out .pytest_cache build *.egg-info
