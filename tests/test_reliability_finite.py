"""Issue 13, points 7 and 8 (Ctrl-C): non-finite values stop a run before they reach a
checkpoint, every JSON file the run folder holds is strict JSON, non-finite inputs are
refused, and SIGINT/SIGTERM end `epsresnet train` in one line and a resumable folder."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from epsresnet_tf.config import resolve_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.jsonsafe import dumps, json_safe
from epsresnet_tf.runfolder import RunFolder
from epsresnet_tf.train.loop import run_training


class Synthetic:
    """A data source with the pipeline's interface (random 8x8 images)."""

    image_shape, num_classes, num_batches = (8, 8, 3), 10, 2

    def __init__(self, seed=0):
        self.seed = seed

    def batches(self, epoch):
        rng = np.random.default_rng(self.seed * 1000 + epoch)
        for _ in range(self.num_batches):
            x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
            yield x, rng.integers(0, 10, 8).astype(np.int32)

    def normalise_np(self, x):
        return x


def tiny(**kw):
    base = {
        "arch": "cifar-basic-8",
        "epochs": 3,
        "batch_size": 8,
        "steps_per_epoch": 1,
        "val_steps": 1,
        "histogram_every": 0,
        "lr_schedule": [[0, 0.01], [1, 1e30]],
    }
    base.update(kw)
    return resolve_config(base)


def stopped_lines(capsys):
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stopped")]


# --- finite checks -----------------------------------------------------------------------


def test_lr_1e30_epoch_is_not_checkpointed_and_not_announced_as_good(tmp_path, capsys):
    """One step at lr 1e30: that step's loss is finite (computed before the update), but the
    weights blow up and the validation loss is NaN. Before the fix that epoch's checkpoint
    was kept and announced as the last good one."""
    run = tmp_path / "lr"
    result = run_training(tiny(), run, sources=(Synthetic(), Synthetic(1)), verbose=0)
    assert result["status"] == "nan"
    assert [p.name for p in (run / "ckpt").glob("*.npz")] == ["epoch-00001.npz"]
    arrays, state = RunFolder(run).load_latest()
    assert state["epoch"] == 1 and all(np.all(np.isfinite(a)) for a in arrays)
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    (line,) = stopped_lines(capsys)
    assert "epoch 2" in line and "val_loss nan" in line  # the weights are 1e30: finite
    assert line.endswith("last good checkpoint kept: epoch-00001.npz")


def test_the_first_non_finite_step_is_recorded_in_the_graph():
    """The step that went non-finite is recorded by the training step itself."""
    import keras

    from epsresnet_tf.train.model import build_training_model

    cfg = tiny(val_steps=0)
    keras.utils.set_random_seed(0)
    model = build_training_model(cfg, 10, (8, 8, 3))
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = np.zeros(8, np.int32)
    model.train_on_batch(x, y)
    assert model.first_nonfinite_step_value() is None
    kernel = model.net.trainable_variables[-1]
    good = kernel.numpy()
    kernel.assign(np.full_like(good, np.nan))
    model.train_on_batch(x, y)  # step 2: NaN logits, NaN loss
    for v in model.net.variables:  # repair every weight: step 3's loss is finite again
        v.assign(np.nan_to_num(v.numpy()))
    model.train_on_batch(x, y)
    assert model.first_nonfinite_step_value() == 2  # the first bad one, set once


# --- strict JSON -------------------------------------------------------------------------


def test_json_safe_writes_null_and_names_the_non_finite_keys():
    row = {"epoch": 2, "loss": float("nan"), "blocks": {"b1": {"discarded": float("inf")}}}
    text = dumps(row)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back["loss"] is None and back["blocks"]["b1"]["discarded"] is None
    assert back["nonfinite"] == ["blocks.b1.discarded", "loss"]
    assert json_safe({"a": [1.0, -math.inf]}) == ({"a": [1.0, None]}, ["a.1"])
    assert dumps({"a": 1.0}) == '{"a": 1.0}'  # finite rows are unchanged


def test_history_rows_are_strict_json(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_history([{"epoch": 1, "val_loss": float("nan")}])
    text = folder.history.read_text()
    assert "NaN" not in text
    assert json.loads(text) == {"epoch": 1, "val_loss": None, "nonfinite": ["val_loss"]}


@pytest.mark.parametrize(
    "override, key",
    [
        ({"epsilon": math.inf}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"lr_schedule": [[0, math.inf]]}, "lr_schedule"),
        ({"adaptive_schedule": [[0, 0.1], [5, math.nan]]}, "adaptive_schedule"),
        ({"momentum": math.nan}, "momentum"),
        ({"weight_decay": math.inf}, "weight_decay"),
        ({"reset_threshold": math.inf}, "reset_threshold"),
        ({"side_weight": -math.inf}, "side_weight"),
    ],
)
def test_non_finite_inputs_are_refused(override, key):
    with pytest.raises(UserError, match=f"{key} must be finite"):
        resolve_config({"arch": "cifar-basic-8", **override})


def epsresnet(*args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "epsresnet_tf.cli", *args]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_epsilon_inf_on_the_command_line_is_one_line(tmp_path, value):
    p = epsresnet("train", "demo", f"--epsilon={value}", "--out", str(tmp_path))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.strip().splitlines() == [
        f"epsresnet train: error: --epsilon must be a finite number, got {value!r}"
    ]
    assert not any(tmp_path.iterdir())  # no config.json with Infinity in it


# --- SIGINT / SIGTERM --------------------------------------------------------------------

TRAIN = (
    "train",
    "demo",
    "--depth",
    "8",
    "--epochs",
    "20",
    "--steps-per-epoch",
    "20",
    "--val-steps",
    "1",
)


def next_run(out, p):
    """The run folder of `p`, once its first epoch is checkpointed (and a bit later)."""
    run = out / "demo_depth8"  # the recipe's name and the overrides
    deadline = time.time() + 180
    while not (run / "ckpt" / "epoch-00001.npz").exists():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # inside epoch 2 or 3
    return run


# SIGTERM (a scheduler's) with make test; SIGINT (Ctrl-C, the same handler) with the slow
# checks: each case trains and resumes a run, ~25 s
@pytest.mark.parametrize(
    "sig, code",
    [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
)
def test_signal_stops_in_one_line_and_the_same_command_resumes(tmp_path, sig, code):
    args = (*TRAIN, "--out", str(tmp_path), "--quiet")
    p = epsresnet(*args)
    run = next_run(tmp_path, p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stopped at epoch ")
    assert lines[0].endswith("; run the same command to resume")
    epoch = int(lines[0].split()[3])
    assert not list((run / "ckpt").glob(".tmp-*")) and not (run / "model.keras").exists()
    folder = RunFolder(run)
    assert folder.kept_epochs()[-1] in (epoch - 1, epoch)
    rows = folder.read_history()
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == folder.kept_epochs()[-1]  # no row of the abandoned epoch

    again = epsresnet(*args)  # the same command resumes and finishes
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, (out, err)
    assert f"resuming {run} after epoch {len(rows)}" in out
    assert [r["epoch"] for r in folder.read_history()] == list(range(1, 21))


def test_a_second_ctrl_c_stops_at_once_in_the_same_one_line(tmp_path):
    """The second SIGINT ends the process at once (stopping.exit_now), wherever it lands:
    it too ends in the one line and 130, and the folder resumes."""
    p = epsresnet(*TRAIN, "--out", str(tmp_path), "--quiet")
    run = next_run(tmp_path, p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.05)  # two signals at once may arrive as one
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)  # stopping.exit_now, wherever the signal lands
    assert "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert line.startswith("stopped at epoch ") and line.endswith("run the same command to resume")
    arrays, state = RunFolder(run).load_latest()
    assert state["epoch"] >= 1 and len(RunFolder(run).read_history()) == state["epoch"]


def test_the_handler_records_the_first_signal_and_a_second_ctrl_c_raises():
    from epsresnet_tf.train.stopping import stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        stop.epoch, stop.step = 3, 7
        assert stop.message() == "stopped at epoch 3 step 7; run the same command to resume"
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_can_call_a_function_instead_of_raising():
    from epsresnet_tf.train.stopping import stop_on_signals

    seen = []
    with stop_on_signals(on_second=seen.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the function is called
        assert seen == [stop] and stop.signum == signal.SIGINT
    os.kill(os.getpid(), signal.SIGINT)  # after the block too: the stop was decided
    assert seen == [stop, stop]
    signal.signal(signal.SIGINT, signal.default_int_handler)
