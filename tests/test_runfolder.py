"""The run folder (epsresnet_tf.runfolder): its layout, reading it back, writing, and
which checkpoints stay."""

import json

import numpy as np
import pytest

from epsresnet_tf import runfolder as RF
from epsresnet_tf.config import resolve_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import RunFolder

CFG = {"arch": "cifar-basic-8", "epochs": 10}


# --- layout ------------------------------------------------------------------------------


def test_layout_names(tmp_path):
    f = RunFolder(tmp_path / "run")
    rel = {
        k: getattr(f, k).relative_to(f.root).as_posix()
        for k in (
            "config",
            "history",
            "tb",
            "ckpt",
            "model",
            "reduced",
            "ablation",
            "report",
            "certificate",
            "reduced_model",
        )
    }
    assert rel == {
        "config": "config.json",
        "history": "history.jsonl",
        "tb": "tb",
        "ckpt": "ckpt",
        "model": "model.keras",
        "reduced": "reduced",
        "ablation": "ablation",
        "report": "report",
        "certificate": "reduced/certificate.json",
        "reduced_model": "reduced/reduced.keras",
    }
    assert f.checkpoint_path(5).relative_to(f.root).as_posix() == "ckpt/epoch-00005.npz"
    assert RunFolder.epoch_of(f.checkpoint_path(5)) == 5
    assert RunFolder.epoch_of("ckpt/notes.npz") is None


def test_a_new_folder_is_created_and_the_same_config_resumes(tmp_path):
    f = RunFolder(tmp_path / "run")
    cfg = resolve_config(CFG)
    assert not RunFolder.is_run_folder(f.root)
    assert f.check_or_create(cfg) is False
    assert RunFolder.is_run_folder(f.root) and f.ckpt.is_dir()
    assert json.loads(f.config.read_text()) == cfg
    assert f.check_or_create(cfg) is True
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a run folder"):
        RunFolder(other).check_or_create(cfg)


def test_history_is_read_and_rewritten_whole(tmp_path):
    f = RunFolder(tmp_path)
    assert f.read_history() == [] and RF.read_history(tmp_path) == []
    rows = [{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.1}]
    f.write_history(rows)
    assert f.history.read_text() == '{"epoch": 1, "lr": 0.1}\n{"epoch": 2, "lr": 0.1}\n'
    with f.history.open("a") as h:
        h.write("\n")  # blank lines are skipped
    assert RF.read_history(tmp_path) == rows
    f.write_history(rows[:1])
    assert f.read_history() == rows[:1]


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.json"
    RF.atomic_write_text(path, "one")
    RF.atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# --- reading a run -----------------------------------------------------------------------


def test_read_run_fills_what_an_older_config_lacks(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "arch": "cifar-basic-8",
                "dataset": "cifar10",
                "gate": "eps",
                "epsilon": 1.5,
                "batch_size": 256,
                "batch_per": "total",
                "gpus": 4,
            }
        )
    )
    run = RF.read_run(tmp_path)
    assert (run.arch, run.dataset, run.batch_size, run.mean, run.seed) == (
        "cifar-basic-8",
        "cifar10",
        64,
        "train",
        0,
    )
    assert run.build_options == {
        "classes": 10,
        "input_shape": (32, 32, 3),
        "gate": "eps",
        "weight_decay": 2e-4,
        "epsilon": 1.5,
        "gate_scope": "batch",
        "gate_group": None,
    }
    assert run.model_path == tmp_path / "model.keras"
    assert run.history_path == tmp_path / "history.jsonl"
    assert run.config["gpus"] == 4 and "mean" not in run.config  # as written


def test_a_written_config_reads_back_with_its_own_values(tmp_path):
    cfg = resolve_config(dict(CFG, batch_size=16, gate_group=4, mean="train+test", seed=3))
    RunFolder(tmp_path).check_or_create(cfg)
    run = RF.read_run(tmp_path)
    assert (run.batch_size, run.mean, run.seed) == (4, "train+test", 3)
    assert run.config == cfg and run.build_options["gate_group"] == 4


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"is not a run folder \(no config.json\)"),
        ("{not json", "is not valid JSON"),
        ('{"arch": "cifar-basic-8"}', "lacks 'dataset'"),
    ],
)
def test_read_run_errors_are_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(UserError, match=message) as err:
        RF.read_run(tmp_path)
    assert "\n" not in str(err.value)


def test_find_run_of_a_saved_net(tmp_path):
    RunFolder(tmp_path / "run").check_or_create(resolve_config(CFG))
    f = RunFolder(tmp_path / "run")
    assert RF.find_run(f.model) == f.root
    assert RF.find_run(f.reduced_model) == f.root
    assert RF.find_run(tmp_path / "elsewhere" / "net.keras") is None
    with pytest.raises(UserError, match="not found"):
        RF.load_model(f.model)


# --- which checkpoints stay (keep_checkpoints_at / keep_checkpoints_every) ---------------


def _save_epochs(folder, epochs):
    for e in epochs:
        folder.save_checkpoint(e, [np.full((2,), e, np.float32)], {"epoch": e})
    return [RunFolder.epoch_of(p) for p in folder.checkpoints()]


def test_checkpoint_retention_keeps_the_chosen_epochs_and_the_two_newest(tmp_path):
    base = CFG
    plain = RunFolder(tmp_path / "plain")
    plain.check_or_create(resolve_config(base))
    assert _save_epochs(plain, range(1, 11)) == [9, 10]

    at = RunFolder(tmp_path / "at")
    at.check_or_create(resolve_config(dict(base, keep_checkpoints_at=[2, 5, 10])))
    assert _save_epochs(at, range(1, 9)) == [2, 5, 7, 8]  # 10 not reached yet
    assert _save_epochs(at, [9, 10]) == [2, 5, 9, 10]

    both = RunFolder(tmp_path / "both")
    both.check_or_create(
        resolve_config(dict(base, keep_checkpoints_at=[3], keep_checkpoints_every=4))
    )
    assert _save_epochs(both, range(1, 11)) == [3, 4, 8, 9, 10]
    arrays, state = both.load(both.checkpoint_path(4))
    assert state == {"epoch": 4} and arrays[0].tolist() == [4.0, 4.0]


def test_retention_settings_are_validated_and_may_change_on_resume(tmp_path):
    base = CFG
    for bad in (
        {"keep_checkpoints_at": 3},
        {"keep_checkpoints_at": [0]},
        {"keep_checkpoints_at": [1.5]},
        {"keep_checkpoints_every": -1},
        {"keep_checkpoints_every": True},
    ):
        with pytest.raises(UserError, match="keep_checkpoints"):
            resolve_config(dict(base, **bad))
    folder = RunFolder(tmp_path / "run")
    assert folder.check_or_create(resolve_config(base)) is False
    _save_epochs(folder, [1, 2, 3])
    # a resume may keep more (the setting does not change the training) ...
    assert folder.check_or_create(resolve_config(dict(base, keep_checkpoints_at=[4]))) is True
    assert json.loads(folder.config.read_text())["keep_checkpoints_at"] == [4]
    assert _save_epochs(folder, [4, 5, 6]) == [4, 5, 6]
    # ... but not train differently
    with pytest.raises(UserError, match="another config"):
        folder.check_or_create(resolve_config(dict(base, epochs=11)))
    # a run folder written before these settings existed still resumes
    old = json.loads(folder.config.read_text())
    for k in RunFolder.RETENTION_KEYS:
        old.pop(k)
    folder.config.write_text(json.dumps(old))
    assert folder.check_or_create(resolve_config(base)) is True
    assert json.loads(folder.config.read_text())["keep_checkpoints_every"] == 0
