"""MirroredStrategy over two logical CPU devices agrees with the single-device run; and one
device with gate groups (virtual towers) agrees with replicas of the group's size.

The two replicas each get half of every global batch. When each global batch is a batch
A stacked twice, every replica sees exactly A — the same BatchNorm statistics, the same
batch-scope gate T and the same mean loss as the single device on [A; A] — so the two runs
must agree on everything: weights, optimizer slots, BN and gate moving averages, history.
This checks the loss scaling (gradients are summed over replicas), the per-replica gating
and the mean-aggregated monitor variables."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from epsresnet_tf.config import resolve_config
from epsresnet_tf.runfolder import RunFolder
from epsresnet_tf.train.loop import run_training

class Doubled:
    image_shape, num_classes, num_batches = (8, 8, 3), 10, 3
    def batches(self, epoch):
        rng = np.random.default_rng(epoch)
        for _ in range(self.num_batches):
            a = rng.normal(size=(4, 8, 8, 3)).astype(np.float32) * 2
            y = rng.integers(0, 10, 4).astype(np.int32)
            yield np.concatenate([a, a]), np.concatenate([y, y])
    def normalise_np(self, x):
        return x

base = {"arch": "cifar-basic-8", "epochs": 3, "val_steps": 0, "histogram_every": 0,
        "epsilon": 4.0, "deterministic": True, "lr_schedule": [[0, 0.02], [2, 0.01]],
        "steps_per_epoch": 3}   # the same steps per epoch (by default 2 GPUs make 2 passes)
out = sys.argv[1]
single = run_training(resolve_config(dict(base, batch_size=8)), out + "/single",
                      sources=(Doubled(), None), strategy=tf.distribute.get_strategy(), verbose=0)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
multi = run_training(resolve_config(dict(base, batch_size=4)), out + "/mirrored",
                     sources=(Doubled(), None), strategy=mirrored, verbose=0)
a, sa = RunFolder(out + "/single").load_latest()
b, sb = RunFolder(out + "/mirrored").load_latest()
diff = max(float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0 for x, y in zip(a, b))
moved = max(float(np.max(np.abs(x))) for x in a if x.size)
print("RESULT " + json.dumps({"n": [len(a), len(b)], "diff": diff, "single": single["history"],
                              "mirrored": multi["history"]}))
"""


def test_mirrored_two_cpus_agrees_with_single_device(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[0][len("RESULT ") :])
    assert res["n"][0] == res["n"][1]
    assert res["diff"] <= 1e-5, res["diff"]
    single, mirrored = res["single"], res["mirrored"]
    assert [r["epoch"] for r in mirrored] == [1, 2, 3]
    for r1, r2 in zip(single, mirrored):
        assert r1["lr"] == r2["lr"] and r1["step"] == r2["step"]
        for key in ("loss", "train_error", "discarded_count"):
            assert abs(r1[key] - r2[key]) <= 1e-5, key
        for bid in r1["blocks"]:
            for k, v in r1["blocks"][bid].items():
                assert abs(r2["blocks"][bid][k] - v) <= 1e-5, (bid, k)
    # ε = 4 on these inputs discards some blocks some of the time: the gate mattered
    assert any(r["discarded_count"] > 0 for r in single)


GROUPS_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from epsresnet_tf import layers as L
from epsresnet_tf.config import resolve_config
from epsresnet_tf.train.loop import run_training

class Halves:
    """Global batches of 8 whose halves differ: a quiet half and a loud one."""
    image_shape, num_classes, num_batches = (8, 8, 3), 10, 3
    def batches(self, epoch):
        rng = np.random.default_rng(epoch)
        for _ in range(self.num_batches):
            a = rng.normal(size=(4, 8, 8, 3)).astype(np.float32) * 0.5
            b = rng.normal(size=(4, 8, 8, 3)).astype(np.float32) * 3 + 1
            yield np.concatenate([a, b]), rng.integers(0, 10, 8).astype(np.int32)
    def normalise_np(self, x):
        return x

base = {"arch": "cifar-basic-8", "epochs": 3, "val_steps": 0, "histogram_every": 0,
        "epsilon": 2.5, "deterministic": True, "lr_schedule": [[0, 0.02], [2, 0.01]],
        "steps_per_epoch": 3}   # the same steps per epoch (by default 2 GPUs make 2 passes)
out = sys.argv[1]
one = tf.distribute.get_strategy()
runs = {
    "grouped": run_training(resolve_config(dict(base, batch_size=8, gate_group=4)),
                            out + "/grouped", sources=(Halves(), None), strategy=one, verbose=0),
    "plain": run_training(resolve_config(dict(base, batch_size=8)), out + "/plain",
                          sources=(Halves(), None), strategy=one, verbose=0),
    "mirrored": run_training(resolve_config(dict(base, batch_size=4)), out + "/mirrored",
                             sources=(Halves(), None),
                             strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                             verbose=0),
}
nets = {k: keras.saving.load_model(out + f"/{k}/model.keras") for k in runs}

def diff(a, b, pick):
    return max(float(np.max(np.abs(x.numpy().astype(np.float64) - y.numpy()))) if x.shape else
               abs(float(x.numpy()) - float(y.numpy())) for x, y in zip(pick(a), pick(b)))

trainable = lambda net: net.trainable_weights
gates = lambda net: [w for g in L.gate_layers(net) for w in g.weights]
print("RESULT " + json.dumps({
    "trainable": {k: diff(nets[k], nets["mirrored"], trainable) for k in ("grouped", "plain")},
    "gates": diff(nets["grouped"], nets["mirrored"], gates),
    "group_sizes": sorted({str(getattr(l, "group_size", "-")) for l in nets["grouped"].layers
                           if isinstance(l, (L.EpsilonGate, L.FusedBatchNormalization))}),
    "history": {k: r["history"] for k, r in runs.items()}}))
'''


def test_gate_groups_on_one_device_agree_with_replicas_on_different_halves(tmp_path):
    # One device with gate groups of 4 (and ghost BN) on global batches of 8 trains like two
    # replicas of 4 without groups, on batches whose halves differ, so grouping matters:
    # without groups the one-device run is measurably different.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", GROUPS_SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[0][len("RESULT ") :])
    assert res["group_sizes"] == ["4"]
    assert res["trainable"]["grouped"] <= 1e-5, res["trainable"]
    assert res["trainable"]["plain"] > 1e-3, res["trainable"]  # the test could fail
    # the gates' ε and monitors too (mean over groups = mean over replicas); BN moving
    # statistics differ: the mean over groups here, replica 0's under MirroredStrategy
    assert res["gates"] <= 1e-5, res["gates"]
    grouped, mirrored = res["history"]["grouped"], res["history"]["mirrored"]
    for r1, r2 in zip(grouped, mirrored):
        for key in ("loss", "train_error", "discarded_count"):
            assert abs(r1[key] - r2[key]) <= 1e-5, key
        for bid in r1["blocks"]:
            for k, v in r1["blocks"][bid].items():
                assert abs(r2["blocks"][bid][k] - v) <= 1e-5, (bid, k)
    # the groups disagreed at least once (one closed, one open): T per group mattered
    assert any(0 < b["gate"] < 1 for r in grouped for b in r["blocks"].values()), grouped
