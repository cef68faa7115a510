"""Kill -9 in the middle of a run, then resume: the final weights (and optimizer slots,
moving averages), history and learning-rate trajectory equal an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from epsresnet_tf.runfolder import RunFolder

RECIPE = {
    "arch": "cifar-basic-8",
    "epochs": 4,
    "batch_size": 16,
    "steps_per_epoch": 5,
    "val_steps": 1,
    "epsilon": 1.0,
    "deterministic": True,
    "histogram_every": 0,
    "lr_schedule": [[0, 0.1], [1, 0.05], [3, 0.01]],
    "adaptive_schedule": [[0, 0.08], [1, 0.03]],
}

SCRIPT = """
import json, sys
from epsresnet_tf.config import resolve_config
from epsresnet_tf.train.loop import run_training
cfg = resolve_config(json.loads(sys.argv[1]))
run_training(cfg, sys.argv[2], sys.argv[3], verbose=0)
"""


def start(run_dir, data_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(RECIPE), str(run_dir), str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def final_state(run_dir):
    arrays, state = RunFolder(run_dir).load_latest()
    rows = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    return arrays, state, rows


def test_kill_minus_nine_then_resume_equals_uninterrupted(tmp_path, shared_data):
    data = shared_data / "cifar10-subset"
    whole = start(tmp_path / "whole", data)
    killed_dir = tmp_path / "killed"
    victim = start(killed_dir, data)
    deadline = time.time() + 240
    while not (killed_dir / "ckpt" / "epoch-00002.npz").exists():
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "model.keras").exists(), "the victim finished before the kill"
    out, _ = whole.communicate(timeout=240)
    assert whole.returncode == 0, out

    resumed = start(killed_dir, data)
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert "resuming" in out and "after epoch 2" in out

    a_arrays, a_state, a_rows = final_state(tmp_path / "whole")
    b_arrays, b_state, b_rows = final_state(killed_dir)
    assert a_state["epoch"] == b_state["epoch"] == 4
    assert len(a_arrays) == len(b_arrays)
    diff = max(
        float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
        for x, y in zip(a_arrays, b_arrays)
    )
    assert diff <= 1e-5
    assert a_state["lr_schedule"] == b_state["lr_schedule"]
    assert [r["lr"] for r in a_rows] == [r["lr"] for r in b_rows]
    assert [r["epoch"] for r in b_rows] == [1, 2, 3, 4]
    for ra, rb in zip(a_rows, b_rows):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], abs=1e-5), k
        for bid in ra["blocks"]:
            for key, v in ra["blocks"][bid].items():
                assert rb["blocks"][bid][key] == pytest.approx(v, abs=1e-5)
    # the weights differ from the initial ones: training happened
    assert a_rows[-1]["step"] == 20
