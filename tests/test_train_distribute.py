"""MirroredStrategy over two logical CPU devices agrees with the single-device run.

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

SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from epsresnet_tf.train.loop import RunFolder, resolve_config, run_training

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
'''


def test_mirrored_two_cpus_agrees_with_single_device(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[0][len("RESULT "):])
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
