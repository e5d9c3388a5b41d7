# Everything a fresh machine needs is installed from here: `make run`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup run test bench clean

setup: $(STAMP) firmware/core/gear.py

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# The gear table is read out of the installed pyfastcdc so both chunkers share one spec.
firmware/core/gear.py: tools/gen_gear.py $(STAMP)
	$(BIN)/python tools/gen_gear.py > $@.tmp && mv $@.tmp $@

run: setup
	$(BIN)/anchor serve

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	tools/bench-all

clean:
	rm -rf $(VENV) build var
