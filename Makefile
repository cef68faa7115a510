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
