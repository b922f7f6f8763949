# Two entry points for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installed together from the registry: its torchvision wheels need its own torch
# build (a CPU-only torch wheel elsewhere on the machine would break torchvision's ops).
TORCH  := torch==2.14.1 torchvision==0.29.2
STAMP  := $(VENV)/.installed

.PHONY: setup test lint demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check alexsearch tests bench scripts
	$(BIN)/ruff format --check alexsearch tests bench scripts

test: lint
	$(BIN)/python -m pytest

demo: setup
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) demo
