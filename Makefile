# `make train` and `make test` do all the set-up on a fresh machine, then their job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
ARGS ?=

.PHONY: setup data cluster train test test-fast lint bench recipes tensorboard lock clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

# Fashion-MNIST offline, from Debian's dataset-fashion-mnist package, when apt-get can be used.
data:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
		echo "Could not install dataset-fashion-mnist: train.py will try to download Fashion-MNIST instead"; \
	else \
		echo "For offline Fashion-MNIST run: sudo apt-get install dataset-fashion-mnist (else train.py downloads it)"; \
	fi

# SLURM (slurmctld, slurmd, munge) and a PostgreSQL server for the cluster tests, which start a one-node cluster
# (tools/slurm_cluster.sh) and a database server of their own (tests/conftest.py) on this machine.
CLUSTER_PACKAGES := slurm-wlm munge postgresql
cluster:
	@if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing SLURM, munge and PostgreSQL (Debian packages $(CLUSTER_PACKAGES)) for the cluster tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLUSTER_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLUSTER_PACKAGES) >/dev/null; } || \
		echo "Could not install $(CLUSTER_PACKAGES): the cluster tests are skipped (outside CI)"; \
	else \
		echo "For the cluster tests run: sudo apt-get install $(CLUSTER_PACKAGES) (else they are skipped)"; \
	fi

train: setup
	$(BIN)/python train.py $(ARGS)

# The tests in one process per core (pytest-xdist, at most 4): most of a test is a command's start-up, which uses one
# core; the tests that share the SLURM cluster run in one of them (--dist loadgroup).
TEST_WORKERS ?= auto
test: setup cluster
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup $(ARGS)

# The quick local lane: everything but the tests marked slow (multi-run, subprocess and fault tests).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/bench.py $(ARGS)

recipes: setup
	$(BIN)/python bench/recipes.py $(ARGS)

tensorboard: setup
	$(BIN)/tensorboard --logdir outputs

lock: $(VENV)/.installed
	{ sed -n '1,2p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
