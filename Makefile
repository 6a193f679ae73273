# One entry point per thing a person wants to do. Every target builds .venv first.

# The first Python here of those the project is tested with (3.12, 3.11), else 3.13 or any
# python3 >= 3.11; `make PYTHON=python3.13 ...` picks one. (A pyenv shim of a version that is
# not active fails the check and is passed over.)
PYTHON ?= $(shell for p in python3.12 python3.11 python3.13 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup pipeline test test-fast lint format bench lock clean

# An environment from scratch: every dependency (test tools included) at the version and
# hash requirements.lock gives for this Python, then the project itself in editable mode.
define make_env
	@test -n "$(PYTHON)" || { echo "make: no Python >= 3.11 found; set PYTHON=..."; exit 1; }
	@echo "make: $(1) with $(PYTHON) ($$($(PYTHON) --version))"
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet --require-hashes -r requirements.lock
	$(1)/bin/pip install --quiet --no-deps -e .
endef

$(STAMP): pyproject.toml requirements.lock
	$(call make_env,$(VENV))
	$(BIN)/python -m confusion_embeddings.cnn.conv  # build the oneDNN kernel now (or say why not)
	touch $(STAMP)

setup: $(STAMP)
	@echo "make: $(VENV) runs $$($(BIN)/python --version)"

# Fetch CIFAR-10 from its read-only DVC remote (`cifar10`), then run every stage that is out
# of date. With a default remote of your own (docs/sharing.md), outputs someone
# already pushed there, DVC's run-cache included, are pulled instead of rebuilt (--pull).
pipeline: setup
	. $(BIN)/activate && dvc pull -r cifar10 data/raw/cifar10-jpeg.tar.gz.dvc \
		&& dvc repro $$(test -n "$$(dvc config core.remote)" && echo --pull)

test: setup
	. $(BIN)/activate && pytest -q

# Unit tests only: skips the end-to-end runs of the dvc CLI.
test-fast: setup
	. $(BIN)/activate && pytest -q -m "not slow"

# One style: ruff's lint and format checks (pyproject.toml). `make format` applies them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Side-by-side speed against PyTorch CPU, in an environment of its own: .venv stays as the
# tests use it. torch comes from the `bench` extra through pip's configured index (on Linux,
# PyPI's wheel is the CUDA build; docs/benchmarks.md says how to take the CPU one).
BENCH := .venv-bench
$(BENCH)/.installed: pyproject.toml requirements.lock
	$(call make_env,$(BENCH))
	$(BENCH)/bin/pip install --quiet -e '.[bench]'
	touch $@

bench: $(BENCH)/.installed
	. $(BENCH)/bin/activate && python -m benchmarks.run

# requirements.lock from pyproject.toml's ranges: one universal lock with hashes, every
# supported Python and platform in one file (markers pick the lines), by uv in a throwaway
# environment. The versions already in the file are kept where the ranges allow.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet uv
	.venv-lock/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
		--extra dev --output-file requirements.lock pyproject.toml
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(BENCH)
