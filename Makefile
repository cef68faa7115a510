# epsresnet_tf: one command per job. Overrides: PY, DATA, EPS, DEPTH, GPUS, OUT.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= data
OUT     ?= runs
GPUS    ?= 0

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-slow describe-zoo

install: $(BIN)/epsresnet

$(BIN)/epsresnet: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

test: install
	$(BIN)/python -m pytest -q

# The multi-minute checks (marked `slow`), for CI machines with time to spare.
test-slow: install
	$(BIN)/python -m pytest -q -m slow

describe-zoo: install
	@for a in cifar-basic-110 cifar-bottleneck-164 cifar-bottleneck-1001 imagenet-34 imagenet-50 imagenet-101 imagenet-152 wrn-40-4 wrn-28-10; do \
	  $(BIN)/epsresnet describe $$a; done

# --- data (issue 3) ---
# Fetch from the official sites with MD5 verification into $(DATA); offline they fail in one
# line saying where to put the files by hand. Existing files are verified, never replaced.
.PHONY: data-cifar10 data-cifar100 data-svhn bench-data

data-cifar10 data-cifar100 data-svhn: data-%: install
	$(BIN)/python -m epsresnet_tf.data.download $* --data-dir $(DATA)

# CIFAR training-pipeline throughput on ../shared/data; updates BENCHMARKS.md "## Data pipeline".
bench-data: install
	$(BIN)/python benchmarks/bench_data.py
