# epsresnet_tf: one command per job. Overrides: PY, DATA, EPS, DEPTH, GPUS, OUT.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= data
OUT     ?= runs
GPUS    ?= 0

# For the benchmark scripts; `epsresnet` itself hides TensorFlow's log lines unless asked
# (--verbose or EPSRESNET_VERBOSE=1).
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install test test-slow lint describe-zoo

install: $(BIN)/epsresnet

$(BIN)/epsresnet: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

test: install
	$(BIN)/python -m pytest -q

# ruff (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, import order, bugbear.
lint: install
	$(BIN)/ruff check epsresnet_tf tests benchmarks
	$(BIN)/ruff format --check epsresnet_tf tests benchmarks
	# the import rule ruff cannot say: no circle, function-level imports for heavy modules only
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_import_graph.py

# The multi-minute checks (marked `slow`), for CI machines with time to spare.
test-slow: install
	$(BIN)/python -m pytest -q -m slow

describe-zoo: install
	@for a in cifar-basic-110 cifar-bottleneck-164 cifar-bottleneck-1001 imagenet-34 imagenet-50 imagenet-101 imagenet-152 wrn-40-4 wrn-28-10; do \
	  $(BIN)/epsresnet describe $$a; done

# --- data (issue 3) ---
# Fetch from the official sites with MD5 verification into $(DATA); offline they fail in one
# line saying where to put the files by hand. Existing files are verified, never replaced.
# `make data-NAME` for every dataset whose description (epsresnet_tf/data/datasets.py) lists
# download sources: cifar10, cifar100, svhn; `make data-list` prints every description.
.PHONY: data-list bench-data

data-list: install
	@$(BIN)/epsresnet data list

data-%: install
	$(BIN)/python -m epsresnet_tf.data.download $* --data-dir $(DATA)

# CIFAR training-pipeline throughput on ../shared/data; updates BENCHMARKS.md "## Data pipeline".
bench-data: install
	$(BIN)/python benchmarks/bench_data.py

# --- training (issue 4) ---
# `make cifar10-eps DEPTH=200 EPS=2.5 GPUS=2 DATA=... OUT=...`; running a target again
# resumes its run folder $(OUT)/<recipe>. DEPTH and EPS default to the recipe's values.
# GPUS=N trains N towers as the authors' scripts did (docs/semantics.md §1, §6): CIFAR/SVHN
# 128 images per tower, an epoch of dataflow.size() steps (N passes); ImageNet the
# recipe's towers where they fit N (R-101 4 × 64: 1, 2, 4; R-152 6 × 42: 1, 2, 3, 6),
# else the script's N × 256 // N (`make imagenet-152 GPUS=8`: 8 × 32), said in one line.
# CPU_DEVICES=N runs the same towers on N logical CPU devices (a check, not for speed).
.PHONY: cifar10-eps cifar100-eps svhn-eps imagenet-101 imagenet-152 keras-resnet50v2 tensorboard demo train-list

DEPTH   ?=
EPS     ?=
TRAIN_FLAGS = --data-dir $(DATA) --out $(OUT) \
              $(if $(CPU_DEVICES),--cpu-devices $(CPU_DEVICES),--gpus $(GPUS)) \
              $(if $(DEPTH),--depth $(DEPTH)) $(if $(EPS),--epsilon $(EPS))

cifar10-eps: install
	$(BIN)/epsresnet train cifar10-eps-110 $(TRAIN_FLAGS)

cifar100-eps: install
	$(BIN)/epsresnet train cifar100-eps-110 $(TRAIN_FLAGS)

svhn-eps: install
	$(BIN)/epsresnet train svhn-eps-110 $(TRAIN_FLAGS)

imagenet-101: install
	$(BIN)/epsresnet train imagenet-eps-101-e2.0 $(TRAIN_FLAGS)

imagenet-152: install
	$(BIN)/epsresnet train imagenet-eps-152-e1.8 $(TRAIN_FLAGS)

# docs/keras-models.md's worked case: keras.applications' ResNet50V2, gated, on the CIFAR-10
# subset (about 40 minutes on 2 CPU cores; again: resumes, then redoes compress and report).
KERAS_DATA ?= ../shared/data/cifar10-subset
KERAS_RUN = $(OUT)/keras-resnet50v2-cifar10-eps
keras-resnet50v2: install
	$(BIN)/epsresnet train keras-resnet50v2-cifar10-eps --data-dir $(KERAS_DATA) --out $(OUT) --quiet
	$(BIN)/epsresnet compress $(KERAS_RUN) --force
	$(BIN)/epsresnet report $(KERAS_RUN) --force

train-list: install
	@$(BIN)/epsresnet train --list

# The dashboard opens at smoothing 0 (TensorBoard's default 0.6 would draw a 0/1 gate as
# a slow decay); docs/DASHBOARD.md says what each page shows.
TB_PORT ?= 6006
# localhost only: the dashboard shows every run under OUT. TB_HOST=0.0.0.0 (or a host
# name) opens it to the network, as TensorBoard's --bind_all did here before.
TB_HOST ?= localhost
tensorboard: install
	@echo "the dashboard:      http://localhost:$(TB_PORT)/#custom_scalars&_smoothingWeight=0"
	@echo "all scalars:        http://localhost:$(TB_PORT)/#scalars&_smoothingWeight=0"
	@echo "time series:        http://localhost:$(TB_PORT)/?smoothing=0#timeseries"
	$(BIN)/tensorboard --logdir $(OUT) --port $(TB_PORT) --host $(TB_HOST)

# The whole loop in one command, nothing to download (scikit-learn ships the 8x8 digits):
# train epsilon-ResNet-20 until blocks are discarded, certify and compress it (identical
# predictions checked), the removal curve, the report (its time, measured: README.md).
# Again: the finished run is kept (train resumes it) and compress/ablate/report are redone.
DEMO_RUN = $(OUT)/demo
demo: install
	$(BIN)/epsresnet train demo --out $(OUT) --quiet
	$(BIN)/epsresnet compress $(DEMO_RUN) --force
	$(BIN)/epsresnet ablate $(DEMO_RUN) --order by-response --force
	$(BIN)/epsresnet report $(DEMO_RUN) --force

# --- compression and reports (issue 5) ---
# RUN: one run folder; RUNS: every run folder under $(OUT) (those with a config.json).
# Outputs are never replaced silently: pass FORCE=--force to redo them.
RUN     ?= $(OUT)/demo
RUNS    ?= $(patsubst %/config.json,%,$(wildcard $(OUT)/*/config.json))
FORCE   ?=
.PHONY: compress ablate report bench-inference

compress: install
	$(BIN)/epsresnet compress $(RUN) --data-dir $(DATA) $(FORCE)

ablate: install
	$(BIN)/epsresnet ablate $(RUN) --data-dir $(DATA) --order by-response $(FORCE)
	$(BIN)/epsresnet ablate $(RUN) --data-dir $(DATA) --order random $(FORCE)

# Tables and PNGs of every run under $(OUT) into $(OUT)/report (one run: its own report/).
report: install
	@test -n "$(RUNS)" || { echo "no run folders under $(OUT): train one first (make demo)"; exit 2; }
	$(BIN)/epsresnet report $(RUNS) $(if $(word 2,$(RUNS)),--out $(OUT)/report) $(FORCE)

# Full against reduced inference time; updates BENCHMARKS.md "## Inference: full vs reduced".
bench-inference: install
	$(BIN)/python benchmarks/bench_inference.py

# --- benchmarks (issues 6, 15) ---
# `make bench` (about 45 minutes on 2 cores; it waits for an idle CPU first) rewrites
# BENCHMARKS.md: ours against PyTorch at float32 and bf16 (cifar-basic-110, batch 128,
# interleaved rounds in one driver: benchmarks/bench_peer.py), the ε-gate's overhead, the
# backward skip per closed fraction and over a whole demo run (bench_skip_run.py), the
# per-epoch overhead of the run's callbacks, the data pipeline against the bf16 model's
# consumption, and inference full vs reduced. The step timed is the one `epsresnet train`
# runs (benchmarks/trainstep.py). The peer is PyTorch in its own venv (bench-peer), never in
# the package's dependencies. One configuration per process:
# `make bench-one ARCH=cifar-basic-110 BENCH_ARGS="--gate eps --precision bf16"`.
.PHONY: bench bench-one bench-peer bench-train bench-epoch bench-levers bench-bf16 bench-gpu bench-skip
ARCH    ?= cifar-basic-110
BENCH_ARGS ?=
PEER_VENV ?= benchmarks/.venv-peer
PEER_PY := $(PEER_VENV)/bin/python
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# seconds to wait for an idle CPU before measuring; more driver options (--rounds 9 ...)
BENCH_WAIT ?= 300
PEER_ARGS ?=

# PyTorch's CPU wheels when their index answers (no CUDA libraries), else PyPI's torch.
bench-peer: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed:
	$(PY) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q --upgrade pip
	@if $(PEER_PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/', timeout=10)" \
	    2>/dev/null; then \
	  echo "bench-peer: torch from $(TORCH_INDEX)"; \
	  $(PEER_VENV)/bin/pip install -q torch --index-url $(TORCH_INDEX); \
	else \
	  echo "bench-peer: $(TORCH_INDEX) unreachable; torch from the default index"; \
	  $(PEER_VENV)/bin/pip install -q torch; \
	fi
	$(PEER_VENV)/bin/pip install -q numpy
	$(PEER_PY) -c "import torch; print('bench-peer: torch', torch.__version__)"
	@touch $@

bench-one: install
	$(BIN)/python benchmarks/bench_train.py --one $(ARCH) $(BENCH_ARGS)

# ours vs the peer, and the gate's overhead, interleaved (BENCHMARKS.md "## Training ...")
bench-train: install bench-peer
	$(BIN)/python benchmarks/bench_peer.py --peer-python $(PEER_PY) --quiet-wait $(BENCH_WAIT) $(PEER_ARGS)

# the per-epoch work outside the steps (BENCHMARKS.md "## Per-epoch overhead")
bench-epoch: install
	$(BIN)/python benchmarks/bench_epoch.py

# the speed levers, one process each (BENCHMARKS.md "## Levers"; ~10 minutes)
bench-levers: install
	$(BIN)/python benchmarks/bench_train.py --levers

# bf16 against float32 on the CIFAR subset: three short real runs (~30-60 minutes)
bench-bf16: install
	$(BIN)/python benchmarks/bench_bf16.py

# the whole-run figure of the backward skip: `make demo`'s training, skip on vs off
bench-skip: install
	$(BIN)/python benchmarks/bench_skip_run.py --quiet-wait $(BENCH_WAIT)

bench: install bench-peer
	$(BIN)/python benchmarks/bench_peer.py --peer-python $(PEER_PY) --quiet-wait $(BENCH_WAIT) $(PEER_ARGS)
	$(BIN)/python benchmarks/bench_skip_run.py --quiet-wait $(BENCH_WAIT)
	$(BIN)/python benchmarks/bench_epoch.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_train.py --header

# On a GPU machine: ResNet-110 CIFAR img/s (bf16/fp16 + XLA), ImageNet ResNet-152 step time
# on synthetic data, the data pipeline with many workers. GPU_ARGS=--smoke: tiny sizes (CPU).
GPU_ARGS ?=
bench-gpu: install
	$(BIN)/python benchmarks/bench_gpu.py $(GPU_ARGS)

# --- reproduction (issue 16) ---
# `make reproduce`: the papers' claims tested on this machine's data (the CIFAR-10 and MNIST
# subsets in REPRO_DATA, scikit-learn's digits), then docs/REPRODUCTION.md and its figures
# generated from the run folders under $(OUT)/repro. CPU, about an hour on 2 quiet cores, at
# low priority. Resumable: finished steps are skipped, an unfinished run resumes; run it
# again to continue. `make reproduce-PIECE` runs one piece (REPRO_PIECES) and rewrites the
# document; `make reproduce-doc` only rewrites it. The pieces are data in
# epsresnet_tf/reproduce/pieces.py.
.PHONY: reproduce reproduce-doc reproduce-gpu
REPRO_DATA   ?= ../shared/data
REPRO_NICE   ?= 15
REPRO_PIECES := params dynamic eps-sweep groups reduced mnist-table removal unit-order
REPRO_FLAGS   = --root $(OUT)/repro --data cifar10=$(REPRO_DATA)/cifar10-subset \
                --data mnist=$(REPRO_DATA)/mnist-subset
REPRO         = $(BIN)/python -m epsresnet_tf.reproduce

# The document is written even when a step failed (its row says so); the status is the run's.
reproduce: install
	nice -n $(REPRO_NICE) $(REPRO) run $(REPRO_FLAGS); status=$$?; \
	  $(REPRO) doc $(REPRO_FLAGS) && exit $$status

reproduce-doc: install
	$(REPRO) doc $(REPRO_FLAGS)

$(addprefix reproduce-,$(REPRO_PIECES)): reproduce-%: install
	nice -n $(REPRO_NICE) $(REPRO) run $* $(REPRO_FLAGS); status=$$?; \
	  $(REPRO) doc $(REPRO_FLAGS) && exit $$status

# The full-scale list on a GPU host with the datasets in $(DATA): one command per paper
# table (epsresnet_tf/reproduce/gpu.py), each writing $(OUT)/repro-gpu/<table>.md with the
# published numbers beside ours. Resumable like `make reproduce`; GPUS=N per run.
REPRO_GPU_FLAGS = --data-dir $(DATA) --root $(OUT)/repro-gpu $(if $(filter-out 0,$(GPUS)),--gpus $(GPUS))
reproduce-gpu: install
	$(REPRO) gpu eps-cifar10 $(REPRO_GPU_FLAGS)
	$(REPRO) gpu eps-cifar100 $(REPRO_GPU_FLAGS)
	$(REPRO) gpu eps-svhn $(REPRO_GPU_FLAGS)
	$(REPRO) gpu eps-imagenet $(REPRO_GPU_FLAGS)
	$(REPRO) gpu gates-cifar $(REPRO_GPU_FLAGS)
	$(REPRO) gpu sharesnet $(REPRO_GPU_FLAGS)
