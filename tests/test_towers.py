"""Towers on several devices, as the authors' scripts laid them (docs/semantics.md §1, §6).

Expected values come from the authors' scripts, not from this package:
- imagenetEpsilonResnet.py:22  TOTAL_BATCH_SIZE = 256
- imagenetEpsilonResnet.py:318 NR_GPU = len(args.gpu.split(','))
- imagenetEpsilonResnet.py:319 BATCH_SIZE = TOTAL_BATCH_SIZE // NR_GPU   (per tower)
- imagenetEpsilonResnet.py:325 config.nr_tower = NR_GPU
- run_imagenet.sh: the paper's R-101 on --gpu 0,1,2,3 (4 towers), R-152 on 0..5 (6 towers)
- cifarEpsilonResnet.py:41 BATCH_SIZE = 128; :178 BatchData(ds, BATCH_SIZE,
  remainder=not isTrain); :258 config.nr_tower = len(args.gpu.split(',')); tensorpack
  0.2.0's TrainConfig: steps_per_epoch = dataflow.size() (batches of one tower), each step
  one batch per tower.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from epsresnet_tf import recipes
from epsresnet_tf.config import towers, towers_notice
from epsresnet_tf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
EPSRESNET = [sys.executable, "-m", "epsresnet_tf.cli"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")

SCRIPT_TOTAL = 256  # imagenetEpsilonResnet.py:22
PAPER_TOWERS = {  # run_imagenet.sh: --gpu lists of the paper's runs, 256 // NR_GPU each
    "imagenet-eps-101-e2.0": (4, 256 // 4),
    "imagenet-eps-152-e1.8": (6, 256 // 6),
}


def _script_towers(gpus):
    """imagenetEpsilonResnet.py:318-325, restated: NR_GPU towers of 256 // NR_GPU."""
    return gpus, SCRIPT_TOTAL // gpus


@pytest.mark.parametrize("name", sorted(PAPER_TOWERS))
@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_imagenet_gpus_follow_the_paper_towers_else_the_script(name, gpus):
    count, size = PAPER_TOWERS[name]
    paper_total = count * size
    _, cfg = recipes.resolve(name, gpus=gpus)
    fits = paper_total % gpus == 0 and (paper_total // gpus) % size == 0
    if fits:  # the recipe's own towers (virtual towers of the paper's size on each device)
        assert (cfg["batch_size"], cfg["gate_group"]) == (paper_total, size)
        assert towers(cfg) == (count, size)
        assert towers_notice(recipes.load(name), cfg) is None
    else:  # the script's towers: one gate and BN group per device
        n, per = _script_towers(gpus)
        assert (cfg["batch_size"], cfg["gate_group"], cfg["gpus"]) == (n * per, per, gpus)
        assert towers(cfg) == (n, per)
        notice = towers_notice(recipes.load(name), cfg)
        assert "\n" not in notice
        assert notice.startswith(f"--gpus {gpus}: {n} towers of {per} images")
        assert f"the paper's run used {count} × {size}" in notice


def test_paper_device_counts_named_and_impossible_counts_refused():
    _, cfg = recipes.resolve("imagenet-eps-152-e1.8", gpus=8)
    notice = towers_notice(recipes.load("imagenet-eps-152-e1.8"), cfg)
    assert notice.endswith("for the paper's towers use --gpus 1, 2, 3 or 6")
    _, cfg = recipes.resolve("imagenet-eps-101-e2.0", gpus=6)
    notice = towers_notice(recipes.load("imagenet-eps-101-e2.0"), cfg)
    assert notice.endswith("for the paper's towers use --gpus 1, 2 or 4")
    # the script's BATCH_SIZE = 256 // 257 is 0: no tower has an image
    with pytest.raises(UserError, match=r"^--gpus 257 is more devices than the 256 images"):
        recipes.resolve("imagenet-eps-152-e1.8", gpus=257)
    # a batch or group the user gives is theirs: a count it does not fit is refused
    with pytest.raises(UserError, match=r"31.5 per device.*--gpus 1, 2, 3 or 6$"):
        recipes.resolve("imagenet-eps-152-e1.8", gpus=8, batch_size=252)
    _, mine = recipes.resolve("imagenet-eps-152-e1.8", gpus=8, batch_size=256, gate_group=16)
    assert towers(mine) == (16, 16)


def test_cifar_batch_is_per_tower():
    # cifarEpsilonResnet.py:41: BATCH_SIZE = 128 per tower, whatever the GPU count
    for gpus in (1, 2, 4):
        _, cfg = recipes.resolve("cifar100-eps-110", gpus=gpus)
        assert towers(cfg) == (gpus, 128)


# --- the make targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,gpus,recipe,expected",
    [
        ("imagenet-152", 8, "imagenet-eps-152-e1.8", (256, 32)),
        ("imagenet-101", 6, "imagenet-eps-101-e2.0", (252, 42)),
        ("imagenet-101", 8, "imagenet-eps-101-e2.0", (256, 32)),
        ("cifar100-eps", 2, "cifar100-eps-110", (128, None)),
    ],
)
def test_make_targets_print_commands_that_resolve(target, gpus, recipe, expected):
    dry = subprocess.run(
        ["make", "-s", "-n", target, f"GPUS={gpus}"], cwd=ROOT, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    line = next(x for x in dry.stdout.splitlines() if "epsresnet train" in x)
    argv = line.split()
    assert argv[argv.index("train") + 1] == recipe and f"--gpus {gpus}" in line
    printed = subprocess.run(
        [*EPSRESNET, *argv[argv.index("train") :], "--print-config"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr
    cfg = json.loads(printed.stdout)
    assert (cfg["batch_size"], cfg["gate_group"], cfg["gpus"]) == (*expected, gpus)
    if cfg["gate_group"]:  # the towers' line, on stderr: stdout stays the JSON alone
        assert f"{gpus} towers of {expected[1]} images" in printed.stderr


# --- real runs on logical CPU devices ----------------------------------------------------


def _write_cifar100(folder, n_train, n_test, rng):
    """CIFAR-100's official python pickles (train, test, meta)."""
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {
            b"batch_label": b"synthetic",
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": list(map(int, rng.integers(0, 100, n))),
            b"coarse_labels": list(map(int, rng.integers(0, 20, n))),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)


def _train_one_epoch(tmp_path, recipe, devices, *flags):
    """`epsresnet train RECIPE --cpu-devices N` for one epoch, no validation, data and runs
    under tmp_path."""
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    argv = ["train", recipe, "--cpu-devices", devices, *flags, "--epochs", "1"]
    argv += ["--val-steps", "0", "--quiet", "--data-dir", data, "--out", runs]
    return subprocess.run([*EPSRESNET, *argv], env=ENV, capture_output=True, text=True)


def test_cifar100_eps_on_two_cpu_devices_runs_the_scripts_towers_and_epoch(tmp_path):
    n_train = 300  # 300 // 128 = 2 batches of one tower: dataflow.size()
    _write_cifar100(tmp_path / "data" / "cifar-100-python", n_train, 40, np.random.default_rng(0))
    proc = _train_one_epoch(tmp_path, "cifar100-eps-110", "2", "--set", "arch=cifar-basic-8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = n_train // 128  # cifarEpsilonResnet.py:178, remainder=False
    assert "2 logical CPU devices stand in for --gpus 2" in proc.stdout
    assert "towers: 2 × 128 images per step on 2 devices" in proc.stdout
    passes = f"{steps * 2 * 128 / n_train:.3g}"  # each step one batch per tower
    assert f"an epoch is {steps} steps, {passes} passes over {n_train} images" in proc.stdout
    run = next((tmp_path / "runs").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["gpus"], cfg["batch_size"], cfg["batch_per"]) == (2, 128, "replica")
    rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [steps]


TOWER_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 8)
import keras
from epsresnet_tf import recipes
from epsresnet_tf.layers import EpsilonGate
from epsresnet_tf.train.loop import make_strategy
from epsresnet_tf.train.model import build_training_model

# `--gpus 8` of the R-152 recipe, at the smallest depth and a small image (64 x 64)
_, cfg = recipes.resolve("imagenet-eps-152-e1.8", gpus=8, depth=18)
strategy = make_strategy(8, device="cpu")
keras.utils.set_random_seed(0)
model = build_training_model(cfg, 10, (64, 64, 3), strategy)
net = model.net
gates = [l for l in net.layers if isinstance(l, EpsilonGate)]
probe = keras.Model(net.inputs, [g.input for g in gates])  # each block's F
rng = np.random.default_rng(0)
x = rng.normal(0, 1, (256, 64, 64, 3)).astype(np.float32)
quiet = 3
x[32 * quiet : 32 * (quiet + 1)] = 0.0  # one tower of blank images (zero padding stays flat)
per = strategy.experimental_distribute_values_from_function(
    lambda ctx: x[32 * ctx.replica_id_in_sync_group : 32 * (ctx.replica_id_in_sync_group + 1)]
)

@tf.function
def step(inputs):
    def replica(xr):
        fs = probe(xr, training=True)
        net(xr, training=True)  # a training call: the gates' monitors move
        return [tf.reduce_max(tf.abs(f)) for f in fs]
    return strategy.run(replica, args=(inputs,))

peaks = step(per)
peaks = np.array([[float(v) for v in strategy.experimental_local_results(p)] for p in peaks])
print("RESULT " + json.dumps({
    "towers": [strategy.num_replicas_in_sync, cfg["gate_group"]],
    "peaks": peaks.tolist(),  # blocks x towers
    "gate_value": [float(g.gate_value.numpy()) for g in gates],
    "epsilon": cfg["epsilon"],
    "quiet": quiet,
}))
"""


@pytest.mark.slow  # 8 logical devices, 2 ImageNet R-152-recipe steps: ~45 s on 2 cores
def test_eight_towers_gate_and_normalise_their_own_32_images(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", TOWER_SCRIPT], env=ENV, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert res["towers"] == [8, 32]
    peaks = np.array(res["peaks"])
    quiet = res["quiet"]
    # BatchNorm over the tower's own 32 blank images: every F of that tower is exactly 0
    # (with statistics over all 256 images the constant would be normalised to non-zero)
    assert np.all(peaks[:, quiet] == 0.0)
    others = np.delete(peaks, quiet, axis=1)
    assert np.all(others > res["epsilon"])
    # T per tower: 0 on the quiet tower, 1 elsewhere; the gates' monitor is the mean over
    # towers (7/8), where a T over the 256 images would be 1
    np.testing.assert_allclose(res["gate_value"], 7 / 8, rtol=0, atol=1e-6)


@pytest.mark.slow  # ResNet-18 at 224 x 224 on 8 logical devices: about 2 minutes on 2 cores
def test_make_imagenet_152_gpus_8_trains_on_eight_cpu_devices(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "imagenet"
    wnids = ["n01440764", "n01443537"]
    for w in wnids:  # the official layout: train/<wnid>/*.JPEG, flat val/ + val.txt
        (root / "train" / w).mkdir(parents=True)
        for k in range(130):
            image = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "train" / w / f"{w}_{k}.JPEG"), image)
    (root / "val").mkdir()
    names = [f"ILSVRC2012_val_{k + 1:08d}.JPEG" for k in range(4)]
    for name in names:
        cv2.imwrite(str(root / "val" / name), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    (root / "val.txt").write_text("".join(f"{n} {k % 2}\n" for k, n in enumerate(names)))
    proc = _train_one_epoch(
        tmp_path, "imagenet-eps-152-e1.8", "8", "--depth", "18", "--steps-per-epoch", "1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, per = _script_towers(8)
    assert f"--cpu-devices 8: {n} towers of {per} images" in proc.stdout
    assert "for the paper's towers use --gpus 1, 2, 3 or 6" in proc.stdout
    assert f"towers: {n} × {per} images per step on 8 devices" in proc.stdout
    run = next((tmp_path / "runs").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["gpus"], cfg["batch_size"], cfg["gate_group"]) == (8, n * per, per)
    rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and len(rows[0]["blocks"]) == 8
