# fashion-vl: `make demo` and `make test` work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/synthetic
SEED ?= 0
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install demo test test-all lint format clean help

help:
	@echo "make demo      install, generate synthetic data, train + evaluate the ITC demo, print the table"
	@echo "make test      install and run the fast test suite (what CI runs)"
	@echo "make test-all  also the slow tests (learning, multi-process, multirun)"
	@echo "make lint      ruff"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fvl-data synth --out $(DATA) --size small --seed $(SEED) --skip-existing
	$(BIN)/fvl-train experiment=demo_itc paths.data_dir=$(CURDIR)/$(DATA) run_name=demo print_config=false
	$(BIN)/fvl-eval experiment=demo_itc paths.data_dir=$(CURDIR)/$(DATA) run_name=demo_trained \
		ckpt_path=logs/train/runs/demo/checkpoints/last.ckpt
	$(BIN)/fvl-eval experiment=demo_itc paths.data_dir=$(CURDIR)/$(DATA) run_name=demo_random
	$(BIN)/python scripts/demo_report.py --trained logs/eval/runs/demo_trained/metrics.json \
		--random logs/eval/runs/demo_random/metrics.json

test: install
	$(BIN)/python -m pytest -m "not slow" -q

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf logs .pytest_cache .ruff_cache
