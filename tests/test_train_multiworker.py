"""A two-process MultiWorkerMirroredStrategy run on 127.0.0.1 agrees with the single-device
run (keras-team/keras#20585 workaround: our own `strategy.run` loop, not Keras' `fit`).

Two worker processes (TF_CONFIG, free 127.0.0.1 ports, CPU, ring all-reduce) train
cifar-basic-8 for 3 epochs of 3 steps into one run folder; a third process trains the same
net on one device. Each global batch is a batch A stacked twice, so each worker's replica
sees exactly A — the same BatchNorm statistics, gate T and mean loss as the single device
on [A; A]; the gradients (each replica's loss / 2, summed over the workers) and the
mean-aggregated monitor variables are then the single device's up to float rounding in
convolutions over batches of 4 rather than 8. So weights, optimizer slots, moving averages
and every history value must agree to 1e-5; the lr, ε and step must agree exactly (they
include an adaptive lr reset driven by the discarded counts and the ε warm-up)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from epsresnet_tf.runfolder import RunFolder

WORKER = Path(__file__).with_name("_multiworker_worker.py")
TIMEOUT = 240


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start(name, mode, tmp_path, env):
    """A worker process; its output goes to files (pipes could fill up and stall it)."""
    log = open(tmp_path / f"{name}.log", "w")
    with log:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), mode],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def result_of(name, proc, tmp_path):
    rc = proc.wait(timeout=TIMEOUT)
    out = (tmp_path / f"{name}.log").read_text()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert rc == 0 and lines, f"{name}: rc {rc}\n{out[-5000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_two_workers_on_localhost_agree_with_single_device(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    procs = {}
    try:
        procs["single"] = start("single", "single", tmp_path, env)
        for i in range(2):
            tmp = tmp_path / f"tmp{i}"  # where a non-chief worker writes its own folder
            tmp.mkdir()
            wenv = dict(
                env,
                TMPDIR=str(tmp),
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            )
            procs[f"worker{i}"] = start(f"worker{i}", "worker", tmp_path, wenv)
        results = {name: result_of(name, p, tmp_path) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    single, w0, w1 = results["single"], results["worker0"], results["worker1"]
    assert w0["status"] == w1["status"] == single["status"] == "done"
    assert w0["history"] == w1["history"]  # the workers agree bit for bit
    assert w0["run_dir"] == w1["run_dir"] == str(tmp_path / "multi")

    # the run folder is the chief's; worker 1 wrote (and removed) a temporary one
    run = RunFolder(tmp_path / "multi")
    rows = [json.loads(ln) for ln in run.history.read_text().splitlines()]
    assert rows == w0["history"]
    assert [p.name for p in run.checkpoints()] == ["epoch-00002.npz", "epoch-00003.npz"]
    assert run.model.is_file() and list(run.tb_train.glob("events.out.tfevents.*"))
    assert not list(run.root.rglob(".*tmp*"))
    assert not list((tmp_path / "tmp1").glob("epsresnet-worker-*"))

    # weights, optimizer slots, BN and gate moving averages
    a, state_a = RunFolder(tmp_path / "single").load_latest()
    b, state_b = run.load_latest()
    assert len(a) == len(b) and state_a["epoch"] == state_b["epoch"] == 3
    assert state_a["lr_schedule"] == state_b["lr_schedule"]
    diff = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b) if x.size)
    assert diff <= 1e-5, diff

    hist, worst = single["history"], 0.0
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r1, r2 in zip(hist, rows):
        assert (r1["lr"], r1["epsilon"], r1["step"]) == (r2["lr"], r2["epsilon"], r2["step"])
        for key in (
            "loss",
            "xent",
            "train_error",
            "train_side_error",
            "val_loss",
            "val_error",
            "discarded_count",
        ):
            worst = max(worst, abs(r1[key] - r2[key]))
            assert abs(r1[key] - r2[key]) <= 1e-5, (r1["epoch"], key, r1[key], r2[key])
        for bid, entry in r1["blocks"].items():
            for k, v in entry.items():
                worst = max(worst, abs(r2["blocks"][bid][k] - v))
                assert abs(r2["blocks"][bid][k] - v) <= 1e-5, (r1["epoch"], bid, k)
    # the schedules took effect: ε = 0 then 4, blocks discarded once ε = 4, and the
    # growth of the discarded count reset the lr to the adaptive schedule's 0.03
    assert [r["epsilon"] for r in rows] == [0.0, 4.0, 4.0]
    assert rows[0]["discarded_count"] == 0.0 and rows[2]["discarded_count"] > 0.3
    assert [round(r["lr"], 6) for r in rows] == [0.02, 0.02, 0.03]
    assert state_b["lr_schedule"]["resets"] == [2]
    print(f"max differences: weights {diff:.3g}, history {worst:.3g}")
