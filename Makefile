# Set-up from nothing: a .venv with the pinned CPU torch first (a bare `torch` requirement would
# pull a multi-GB CUDA build), the package with its training extra, the native kernels; `setup`
# (tests) adds the dev tools, `demo` needs none of them. Each step says what it does.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-out

.PHONY: setup kernels test test-fast lint demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(BIN)/python
	@echo "== set-up: torch 2.13 for the CPU, then analog-onnx and its dependencies"
	$(BIN)/pip install --progress-bar on torch==2.13.0
	$(BIN)/pip install --progress-bar on -e '.[train]'
	touch $@

$(VENV)/.installed: $(VENV)/.base
	@echo "== set-up: the development tools (pytest, ruff, ray, scipy, mnist1d, tokenizers)"
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $@

kernels: $(VENV)/.base
	@echo "== set-up: the native kernels (C++, a minute or two the first time)"
	$(BIN)/analog-onnx kernels build

setup: $(VENV)/.installed kernels

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/pytest -n 2 -q

test-fast: setup
	$(BIN)/pytest -n 2 -q -m "not slow"

demo: $(VENV)/.base kernels
	bash tools/demo.sh $(DEMO)

bench: setup
	$(BIN)/python tools/bench_kernels.py
	$(BIN)/python tools/bench_evaluate.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache
