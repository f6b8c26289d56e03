# fashion-vl: `make demo` and `make test` work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UNIFASHION_STAMP := $(VENV)/.installed-unifashion
CLIP_STAMP := $(VENV)/.installed-clip
DEV_STAMP := $(VENV)/.installed-dev
SEARCH_STAMP := $(VENV)/.installed-search
DATA ?= data/synthetic
SEED ?= 0
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(BIN):$(PATH)
# pip installs with --no-compile (byte-compiling all of torch and transformers takes ~70 s on 2 cores);
# Python then compiles just the modules that are imported, once, so it must be allowed to write them.
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile

.PHONY: install demo readme-figures demo-unifashion demo-generation compare test test-all lint format clean help

help:
	@echo "make demo      install, synthetic data, pre-train, fine-tune 5 tasks (random init vs pre-trained), print the table"
	@echo "make readme-figures  make demo, then write its table (with the commit and machine) into README.md"
	@echo "make demo-unifashion  UniFashion phase 1 -> phase 2 on CPU: captioning, FashionIQ R@10 with/without ITM re-ranking"
	@echo "make demo-generation  UniFashion diffusion on CPU: try-on keep-region PSNR and generated attributes, trained vs untrained"
	@echo "make compare   the demo FashionViL, UniFashion phase 1 and a tiny open_clip (ITC) on every protocol: one table"
	@echo "make test      install and run the fast test suite (what CI runs)"
	@echo "make test-all  also the slow tests (learning, multi-process, multirun)"
	@echo "make lint      ruff, and the import-layer contract (lint-imports, pyproject.toml)"

# The demo needs only the package; the tests add the [dev] extra on top (one stamp each, so
# `make demo` then `make test` installs the core once).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e .
	@touch $(STAMP)

# The UniFashion demos add the [unifashion] extra (peft for the LLM's LoRA, the captioning scorers).
$(UNIFASHION_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[unifashion]"
	@touch $(UNIFASHION_STAMP)

# The demo ends with a catalogue index (fvl-index), which needs the [search] extra (faiss-cpu).
$(SEARCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[search]"
	@touch $(SEARCH_STAMP)

# The comparison adds the [clip] extra (open_clip, matplotlib for the recall@K plot).
$(CLIP_STAMP): $(UNIFASHION_STAMP)
	$(PIP_INSTALL) -e ".[clip]"
	@touch $(CLIP_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[dev]"
	@touch $(DEV_STAMP)

install: $(DEV_STAMP)

# The whole pipeline on the synthetic data: pre-training (six tasks), then each fine-tuning task from
# random init and from the pre-trained checkpoint (one Hydra multirun), then the results table.
PRETRAIN_CKPT := logs/train/runs/demo_pretrain/checkpoints/last.ckpt
FINETUNES := demo_finetune_retrieval,demo_finetune_composed_fashioniq,demo_finetune_composed_fashion200k,demo_finetune_classification,demo_finetune_outfit
# num_threads: CPU results depend on torch's thread count; pinned to the 2 of the machine the README's
# figures come from, so that a machine with more cores (same CPU family) prints the same table.
DEMO_ARGS := paths.data_dir=$(CURDIR)/$(DATA) print_config=false num_threads=2
DEMO_INDEX := logs/demo_index
DEMO_QUERY := black leather sneakers
# fidelity preset of the UniFashion demo's runs: ours | reference (the authors' computation, docs/fidelity.md)
FIDELITY ?= ours

demo: $(SEARCH_STAMP)
	$(BIN)/fvl-data synth --out $(DATA) --size small --seed $(SEED) --skip-existing
	rm -rf logs/train/runs/demo_pretrain logs/eval/runs/demo_pretrain_random logs/train/multiruns/demo_finetune
	$(BIN)/fvl-train experiment=demo_pretrain run_name=demo_pretrain $(DEMO_ARGS)
	$(BIN)/fvl-eval experiment=demo_pretrain run_name=demo_pretrain_random $(DEMO_ARGS)
	$(BIN)/fvl-train -m experiment=$(FINETUNES) model.init_from=$(CURDIR)/$(PRETRAIN_CKPT),null \
		run_name=demo_finetune $(DEMO_ARGS) '~callbacks.rich_progress_bar'
	$(BIN)/python scripts/demo_report.py --data $(DATA) --pretrain logs/train/runs/demo_pretrain \
		--pretrain-random logs/eval/runs/demo_pretrain_random --finetune logs/train/multiruns/demo_finetune \
		--out logs/demo_results.json
	$(BIN)/fvl-index build --model $(PRETRAIN_CKPT) --catalogue $(DATA) --out $(DEMO_INDEX) --overwrite --quiet
	$(BIN)/fvl-index query $(DEMO_INDEX) --text "$(DEMO_QUERY)" -k 5

# The README's demo table from a run of this checkout (scripts/readme_figures.py writes the commit with it).
readme-figures: demo
	$(BIN)/python scripts/readme_figures.py --results logs/demo_results.json --readme README.md

# UniFashion part 1: phase 1 (retrieval, captioning) then phase 2 (FashionIQ composed retrieval from the
# phase-1 Q-Former), each evaluated before and after training (scripts/demo_unifashion.py).
demo-unifashion: $(UNIFASHION_STAMP)
	$(BIN)/python scripts/demo_unifashion.py --data $(DATA) --data-seed $(SEED) --logs logs/demo_unifashion$(subst _ours,,_$(FIDELITY)) \
		--fidelity $(FIDELITY)

# UniFashion's diffusion branch: fit the tiny VAEs and the attribute judge, then try-on editing and
# image+text generation, each evaluated before and after training (scripts/demo_generation.py).
demo-generation: $(UNIFASHION_STAMP)
	$(BIN)/python scripts/demo_generation.py --data data/synthetic_generation --logs logs/demo_generation \
		--seed $(SEED)

# Every model on the same protocols (docs/compare.md): the demo FashionViL (make demo), the demo UniFashion
# phase 1 (make demo-unifashion; each demo runs first when its checkpoint is missing) and a tiny open_clip
# fine-tuned here with ITC + PAC on the synthetic FashionAll, over every eval_openclip_* protocol.
UNIFASHION_PHASE1_CKPT := logs/demo_unifashion/train/runs/phase1/checkpoints/last.ckpt
COMPARE_MODELS := fashionvil_demo unifashion_demo openclip_tiny openclip_tiny_finetuned

compare: $(CLIP_STAMP)
	$(BIN)/fvl-data synth --out $(DATA) --size small --seed $(SEED) --skip-existing
	@test -f $(PRETRAIN_CKPT) || $(MAKE) demo
	@test -f $(UNIFASHION_PHASE1_CKPT) || $(MAKE) demo-unifashion
	$(BIN)/fvl-train experiment=demo_finetune_openclip run_name=demo_finetune_openclip $(DEMO_ARGS) \
		trainer.enable_progress_bar=false
	$(BIN)/fvl-compare --models $(COMPARE_MODELS) --out logs/compare -- $(DEMO_ARGS) data.num_workers=2

# make test runs one pytest-xdist worker per core of the 2-core CI machine, a test file per worker at a
# time (module fixtures built once); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "not slow" -q tests --nbmake notebooks --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-all: $(DEV_STAMP)
	$(BIN)/python -m pytest -q tests --nbmake notebooks

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf logs .pytest_cache .ruff_cache
