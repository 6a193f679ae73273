# One entry point per thing a person wants to do. Every target builds .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup pipeline test test-fast lint format bench lock clean

# The virtual environment, from scratch: pinned versions (requirements.lock), then the
# project itself in editable mode with its test extra.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	$(BIN)/python -m confusion_embeddings.cnn.conv  # build the oneDNN kernel now (or say why not)
	touch $(STAMP)

setup: $(STAMP)

# Fetch CIFAR-10 from its read-only DVC remote (`cifar10`) and run every stage that is out of
# date. (That remote holds only the raw archive; the stages' outputs are rebuilt, or pulled
# from a remote of your own with `dvc pull`.)
pipeline: $(STAMP)
	. $(BIN)/activate && dvc pull -r cifar10 data/raw/cifar10-jpeg.tar.gz.dvc && dvc repro

test: $(STAMP)
	. $(BIN)/activate && pytest -q

# Unit tests only: skips the end-to-end runs of the dvc CLI.
test-fast: $(STAMP)
	. $(BIN)/activate && pytest -q -m "not slow"

# One style: ruff's lint and format checks (pyproject.toml). `make format` applies them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Side-by-side speed against PyTorch CPU. PyTorch's CPU build comes from its own index:
# PyPI's Linux wheel is the CUDA one, several GB (a local wheel of the same version is used
# where pip is configured with one).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
bench: $(STAMP)
	$(BIN)/pip install --quiet --timeout 20 --index-url $(TORCH_INDEX) \
		--extra-index-url https://pypi.org/simple 'torch==2.13.0'
	. $(BIN)/activate && python -m benchmarks.run

# requirements.lock from scratch: a fresh environment from pyproject.toml's ranges, frozen.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' requirements.lock; .venv-lock/bin/pip freeze --exclude-editable; } \
		> requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV)
