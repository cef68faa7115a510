"""Kill -9 in the middle of a run, then resume: the final weights (and optimizer slots,
moving averages), history and learning-rate trajectory equal an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _sources import Synthetic

from epsresnet_tf.errors import UserError
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
    # the manifest is written last: with it, epoch 2's checkpoint is complete
    while not (killed_dir / "ckpt" / "epoch-00002.json").exists():
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


# --- a damaged or busy run folder, in training (a tiny net on synthetic data) -------------


def tiny(epochs):
    from epsresnet_tf.config import resolve_config

    return resolve_config(
        {
            "arch": "cifar-basic-8",
            "epochs": epochs,
            "batch_size": 8,
            "val_steps": 0,
            "histogram_every": 0,
        }
    )


def train(run_dir, epochs, **kw):
    from epsresnet_tf.train.loop import run_training

    return run_training(
        tiny(epochs), run_dir, sources=(Synthetic(num_batches=2), None), verbose=0, **kw
    )


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    old = os.umask(0o022)
    try:
        train(run, 3)
    finally:
        os.umask(old)
    return run


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_finished_run_is_readable_by_collaborators(three_epochs):
    """Today's code wrote config.json and the checkpoints 0600 (tempfile.mkstemp)."""
    for p in three_epochs.rglob("*"):
        want = 0o755 if p.is_dir() else 0o644
        assert p.stat().st_mode & 0o777 == want, p
    assert not (three_epochs / "train.lock").exists()


def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(three_epochs, tmp_path, capsys):
    run = _copy(three_epochs, tmp_path)
    ckpt = run / "ckpt" / "epoch-00003.npz"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    ckpt.write_bytes(bytes(data))
    result = train(run, 3)
    out = capsys.readouterr()
    assert "skipping checkpoint" in out.err and "sha256 differs" in out.err
    assert "after epoch 2" in out.out
    assert result["status"] == "done" and [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert RunFolder(run).kept_epochs() == [2, 3] and not (run / "ckpt" / "corrupt").exists()


def test_no_valid_checkpoint_is_refused_and_restart_moves_the_run_aside(
    three_epochs, tmp_path, capsys
):
    """Today's code restarted at epoch 1, emptied history.jsonl and later deleted the new
    checkpoints."""
    from epsresnet_tf.errors import UserError

    run = _copy(three_epochs, tmp_path)
    for p in (run / "ckpt").glob("*.npz"):
        p.write_bytes(bytes(p.stat().st_size))
    before = _snapshot(run)
    with pytest.raises(UserError, match="no valid checkpoint.*--restart") as err:
        train(run, 3)
    assert "\n" not in str(err.value) and _snapshot(run) == before
    capsys.readouterr()
    result = train(run, 3, restart=True)
    assert "moved the old run aside" in capsys.readouterr().out
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    (aside,) = tmp_path.glob("run.old-*")
    assert _snapshot(aside) == before  # nothing of the old run is lost


def test_missing_ckpt_folder_is_refused(three_epochs, tmp_path):
    import shutil

    from epsresnet_tf.errors import UserError

    run = _copy(three_epochs, tmp_path)
    shutil.rmtree(run / "ckpt")
    before = _snapshot(run)
    with pytest.raises(UserError, match="ckpt is missing but history.jsonl has 3 epochs"):
        train(run, 3)
    assert _snapshot(run) == before


def test_a_second_writer_gets_one_line_naming_the_first(three_epochs, tmp_path):
    import socket

    from epsresnet_tf.errors import UserError

    run = _copy(three_epochs, tmp_path)
    before = _snapshot(run)
    with RunFolder(run).open():  # another `train` holds the folder
        with pytest.raises(UserError, match="in use by another `epsresnet train`") as err:
            train(run, 3)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(err.value)
    assert "\n" not in str(err.value) and _snapshot(run) == before


# --- a resume that changes the config: more epochs, and what is refused ------------------


def test_a_finished_run_extended_by_one_epoch_trains_exactly_that_epoch(tmp_path, capsys):
    """`--epochs 2` on a finished 1-epoch run used to be refused as "another config"."""
    run = tmp_path / "run"
    assert [r["epoch"] for r in train(run, 1)["history"]] == [1]
    first = (run / "ckpt" / "epoch-00001.npz").read_bytes()
    capsys.readouterr()
    result = train(run, 2)
    out = capsys.readouterr().out
    assert "resuming" in out and "after epoch 1" in out
    assert "epochs 1 -> 2 after epoch 1" in out
    assert result["status"] == "done" and [r["epoch"] for r in result["history"]] == [1, 2]
    assert (run / "ckpt" / "epoch-00001.npz").read_bytes() == first  # epoch 1 not redone
    folder = RunFolder(run)
    assert folder.read_config()["epochs"] == 2
    (change,) = folder.read_changes()
    assert change["after_epoch"] == 1 and change["changes"] == {"epochs": {"old": 1, "new": 2}}
    # the same weights as a run of 2 epochs from the start (resume is exact)
    straight = tmp_path / "straight"
    train(straight, 2)
    a, b = folder.load_latest()[0], RunFolder(straight).load_latest()[0]
    assert max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b)) <= 1e-5
    # fewer epochs than trained: refused, nothing changed
    before = _snapshot(run)
    with pytest.raises(UserError, match="has trained 2 epochs: --epochs 1 would end it"):
        train(run, 1)
    assert _snapshot(run) == before


def test_a_change_of_what_the_run_computes_is_refused_naming_the_key(three_epochs, tmp_path):
    from epsresnet_tf.train.loop import run_training

    run = _copy(three_epochs, tmp_path)
    before = _snapshot(run)
    for change, key in (({"epsilon": 1.0}, "epsilon"), ({"batch_size": 4}, "batch_size")):
        cfg = dict(tiny(3), **change)
        with pytest.raises(UserError) as err:
            run_training(cfg, run, sources=(Synthetic(num_batches=2), None), verbose=0)
        message = str(err.value)
        assert "\n" not in message and "another config" in message
        assert f"{key}: " in message and "--name" in message and "--restart" in message
    assert _snapshot(run) == before


# --- --init-from: a new run from another run's net weights -------------------------------


def test_init_from_starts_from_the_source_weights_but_not_its_epoch(three_epochs, tmp_path):
    import keras

    from epsresnet_tf.train.loop import run_training

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.kernels = [v.numpy() for v in self.model.net.variables]

    source = RunFolder(three_epochs).load_latest()[0]
    seen = FirstWeights()
    cfg = dict(tiny(1), init_from=str(three_epochs))
    result = run_training(
        cfg,
        tmp_path / "new",
        sources=(Synthetic(num_batches=2), None),
        verbose=0,
        extra_callbacks=[seen],
    )
    assert [r["epoch"] for r in result["history"]] == [1]  # its own epochs, from 1
    assert len(seen.kernels) > 4
    for mine, theirs in zip(seen.kernels, source):
        np.testing.assert_array_equal(mine, theirs)
    assert json.loads((tmp_path / "new" / "config.json").read_text())["init_from"] == str(
        three_epochs
    )
    fresh = FirstWeights()
    run_training(
        tiny(1),
        tmp_path / "fresh",
        sources=(Synthetic(num_batches=2), None),
        verbose=0,
        extra_callbacks=[fresh],
    )
    assert not np.array_equal(fresh.kernels[0], source[0])  # the copy was not by chance


def test_init_from_another_architecture_is_refused_writing_nothing(three_epochs, tmp_path):
    from epsresnet_tf.config import resolve_config
    from epsresnet_tf.train.loop import run_training

    cfg = resolve_config(
        {"arch": "cifar-basic-14", "epochs": 1, "batch_size": 8, "val_steps": 0},
        histogram_every=0,
        init_from=str(three_epochs),
    )
    with pytest.raises(UserError) as err:
        run_training(cfg, tmp_path / "new", sources=(Synthetic(num_batches=2), None), verbose=0)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--init-from {three_epochs}: its net")
    assert "arch 'cifar-basic-8', this run's 'cifar-basic-14'" in message
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="is not a run folder"):
        run_training(
            dict(tiny(1), init_from=str(tmp_path)),
            tmp_path / "other",
            sources=(Synthetic(num_batches=2), None),
            verbose=0,
        )


# --- a run folder written before the typed config ------------------------------------------

#: A run folder the previous main (commit fe34f22, before RunConfig and the gate kinds'
#: settings) wrote: one epoch of cifar-basic-8 with ε = 0.5 on Synthetic(batch=8,
#: num_batches=2), its config.json, history.jsonl and checkpoint as they were on disk.
OLD_RUN = Path(__file__).parent / "fixtures" / "run-fe34f22"
#: Config keys added since that folder was written, at the value that changes nothing:
#: read back, the folder's config has them (config.SAVED_FALLBACKS); on disk it stays as is.
ADDED_SINCE = {"weights": None, "backward_skip": True}


def test_a_run_folder_of_the_previous_main_resumes_unchanged(tmp_path):
    import shutil

    from _sources import tiny as tiny_config

    from epsresnet_tf.config import FUTURE_ONLY, saved_config
    from epsresnet_tf.runconfig import RunConfig
    from epsresnet_tf.train.loop import run_training

    run_dir = tmp_path / "old"
    shutil.copytree(OLD_RUN, run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    old_row = json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])
    run = RunConfig.from_dict(saved_config(saved))
    assert run.as_dict() == saved | ADDED_SINCE and run.gate.own == {
        "epsilon": 0.5,
        "epsilon_start_epoch": 0,
        "gate_scope": "batch",
    }

    cfg = tiny_config(epochs=2, side_head=False, summary_every_steps=0, epsilon=0.5)
    assert cfg == saved | ADDED_SINCE | {"epochs": 2}  # today's resolution of the same settings
    result = run_training(
        cfg, run_dir, sources=(Synthetic(batch=8, num_batches=2), None), verbose=0
    )
    assert result["status"] == "done"
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert result["history"][0] == old_row  # the old epoch kept, not retrained
    assert result["history"][1]["epsilon"] == 0.5 and result["history"][1]["step"] == 4
    # config.json takes the new epochs, and the future-only keys it lacked (no change row)
    future = {k: v for k, v in ADDED_SINCE.items() if k in FUTURE_ONLY}
    assert json.loads((run_dir / "config.json").read_text()) == saved | {"epochs": 2} | future
    assert future == {"backward_skip": True}
