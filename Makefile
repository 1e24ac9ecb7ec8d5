# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing, installs what it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORE   := $(VENV)/.core-installed
DEV    := $(VENV)/.dev-installed
OUT    ?= out

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV): $(CORE)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(CORE)

demo: $(CORE)
	$(BIN)/skyfix demo --out $(OUT)/demo

test: $(DEV)
	$(BIN)/python -m pytest -q

lint: $(DEV)
	$(BIN)/ruff check runtime models maps calibration sim tests benchmarks

clean:
	rm -rf $(OUT) .pytest_cache
