# HaBa workbench. `make app` opens the workbench, `make test` runs the whole suite; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PORT ?= 8501
PYTEST_ARGS ?=

.PHONY: setup extras data jemalloc browser app test test-slow demo bench bench-peers lint format

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# the project itself, editable: `import haba_core` / `workbench` anywhere in the venv, and the `haba` command
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP) data jemalloc

# The optional extras, which the suite tests too: the Ray executor and the TensorBoard / W&B logger sinks
$(EXTRAS_STAMP): $(STAMP) requirements-ray.txt requirements-loggers.txt
	$(PY) -m pip install -q -r requirements-ray.txt -r requirements-loggers.txt
	touch $(EXTRAS_STAMP)

extras: $(EXTRAS_STAMP)

# Debian's Fashion-MNIST (the default dataset); without apt it is downloaded by torchvision on first use.
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
	    || echo "warning: could not install dataset-fashion-mnist; torchvision will try to download it"; \
	  else echo "note: $(FMNIST) missing and apt unavailable; torchvision will try to download Fashion-MNIST"; fi; \
	fi

# jemalloc: distilling processes run under it, keeping freed memory (haba_core/memory.py); optional
# (installed is what haba_core.memory.jemalloc_library finds: the one list of paths)
jemalloc: $(STAMP)
	@if ! $(PY) -c "import sys; from haba_core.memory import jemalloc_library; sys.exit(not jemalloc_library())"; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q libjemalloc2 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libjemalloc2 >/dev/null 2>&1)) \
	    || echo "note: could not install libjemalloc2; distilling uses glibc's allocator"; \
	  else echo "note: libjemalloc2 missing and apt unavailable; distilling uses glibc's allocator"; fi; \
	fi

# Chromium for the end-to-end browser test
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) \
	    || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "note: /usr/bin/chromium missing; browser tests will be skipped"; fi; \
	fi

app: setup
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true

test: setup extras browser
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: setup extras
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: setup
	$(PY) -m bench.run --profile demo --out runs

lint: $(STAMP)
	$(PY) -m ruff check haba_core workbench tests scripts bench app.py
	$(PY) -m ruff format --check haba_core workbench tests scripts bench app.py

format: $(STAMP)
	$(PY) -m ruff format haba_core workbench tests scripts bench app.py
	$(PY) -m ruff check --fix haba_core workbench tests scripts bench app.py

# The benchmark protocol (bench/): `make bench` runs the CPU profile (about 40 minutes, resumable);
# BENCH_ARGS="--profile paper" for the published settings on a GPU.
BENCH_ARGS ?= --profile cpu
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

# Our steps against the official codes on this machine (bench/peer_speed.py): PEERS holds clones of
# DatasetCondensation, DatasetFactorization (official HaBa) and mtt-distillation, fetched beforehand.
PEERS ?= ../peers
bench-peers: setup
	$(PY) -m bench.peer_speed --dc $(PEERS)/DatasetCondensation --haba $(PEERS)/DatasetFactorization \
		--mtt $(PEERS)/mtt-distillation $(PEER_ARGS)
