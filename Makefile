# One entry point per thing a person wants to do. Every target builds .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup pipeline test test-fast bench clean

# The virtual environment, from scratch: pinned versions (requirements.lock), then the
# project itself in editable mode with its test extra.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	$(BIN)/python -m stages.onednn  # compile the CPU convolution kernel now, and check it
	touch $(STAMP)

setup: $(STAMP)

# Fetch CIFAR-10 from the DVC remote and run every stage that is out of date. (The shared
# remote holds only the raw archive; the stages' outputs are rebuilt, or pulled from a
# remote of your own with `dvc pull`.)
pipeline: $(STAMP)
	. $(BIN)/activate && dvc pull data/raw/cifar10-jpeg.tar.gz.dvc && dvc repro

test: $(STAMP)
	. $(BIN)/activate && pytest -q

# Unit tests only: skips the end-to-end runs of the dvc CLI.
test-fast: $(STAMP)
	. $(BIN)/activate && pytest -q -m "not slow"

# Side-by-side speed against PyTorch CPU (installs the bench extra: torch 2.13.0 CPU).
bench: $(STAMP)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,bench]'
	. $(BIN)/activate && python -m benchmarks.run

clean:
	rm -rf $(VENV)
