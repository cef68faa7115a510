"""The run folder (epsresnet_tf.runfolder): its layout, reading it back, writing, and
which checkpoints stay."""

import json
import os

import numpy as np
import pytest

from epsresnet_tf import runfolder as RF
from epsresnet_tf.config import resolve_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import RunFolder
from epsresnet_tf.runfolder import atomic as atomic_io
from epsresnet_tf.runfolder import checkpoints as checkpoint_io

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
        folder.check_or_create(resolve_config(dict(base, epsilon=1.5)))
    # a run folder written before these settings existed still resumes
    old = json.loads(folder.config.read_text())
    for k in ("keep_checkpoints_at", "keep_checkpoints_every"):
        old.pop(k)
    folder.config.write_text(json.dumps(old))
    assert folder.check_or_create(resolve_config(base)) is True
    assert json.loads(folder.config.read_text())["keep_checkpoints_every"] == 0


# --- reliability: verified checkpoints, the walk back, the lock, atomic writes ---------


def _run_with_checkpoints(root, epochs=(1, 2, 3), history=True):
    """A run folder with valid checkpoints of `epochs` and their history rows."""
    f = RunFolder(root)
    f.check_or_create(resolve_config(CFG))
    for e in epochs:
        f.save_checkpoint(e, [np.full((3,), e, np.float32)], {"epoch": e})
    if history:
        f.write_history([{"epoch": e} for e in range(1, max(epochs) + 1)])
    return RunFolder(root)  # a new process's view: nothing verified yet


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _damage(path, how):
    data = path.read_bytes()
    if how == "zero-filled":
        path.write_bytes(bytes(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bit-flipped":
        i = len(data) // 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :])


def test_checkpoints_carry_a_manifest_written_after_them(tmp_path):
    f = _run_with_checkpoints(tmp_path / "run", (1, 2))
    assert sorted(p.name for p in f.ckpt.iterdir()) == [
        "epoch-00001.json",
        "epoch-00001.npz",
        "epoch-00002.json",
        "epoch-00002.npz",
    ]
    manifest = json.loads(f.manifest_of(f.checkpoint_path(2)).read_text())
    assert manifest["file"] == "epoch-00002.npz" and manifest["epoch"] == 2
    assert manifest["size"] == f.checkpoint_path(2).stat().st_size
    assert f.verify(f.checkpoint_path(2)) is None


@pytest.mark.parametrize("how", ["truncated", "empty", "bit-flipped", "zero-filled"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, how):
    f = _run_with_checkpoints(tmp_path / "run")
    _damage(f.checkpoint_path(3), how)
    arrays, state = f.load_latest()
    assert state == {"epoch": 2} and arrays[0].tolist() == [2.0, 2.0, 2.0]
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "epoch-00003.npz" in err
    assert "resuming from epoch-00002.npz" in err


def test_every_checkpoint_damaged_is_refused_and_nothing_deleted(tmp_path):
    """Today's code restarted at epoch 1 and its keep-2 clean-up then deleted the new
    checkpoints (the damaged ones had higher epochs)."""
    f = _run_with_checkpoints(tmp_path / "run")
    for p in f.checkpoints():
        _damage(p, "zero-filled")
    before = _snapshot(f.root)
    with pytest.raises(UserError, match="no valid checkpoint.*--restart") as err:
        f.load_latest()
    assert "\n" not in str(err.value) and "epoch-00003.npz" in str(err.value)
    assert _snapshot(f.root) == before


def test_missing_ckpt_folder_with_history_is_refused(tmp_path):
    f = _run_with_checkpoints(tmp_path / "run")
    import shutil

    shutil.rmtree(f.ckpt)
    with pytest.raises(UserError, match="ckpt is missing but history.jsonl has 3 epochs"):
        f.load_latest()
    # an unfinished first epoch (one row, no checkpoint yet) simply starts again
    g = _run_with_checkpoints(tmp_path / "first", (), history=False)
    g.write_history([{"epoch": 1}])
    assert g.load_latest() is None


def test_checkpoints_without_manifests_of_older_versions_still_load(tmp_path):
    f = _run_with_checkpoints(tmp_path / "run", (1, 2))
    for p in f.ckpt.glob("*.json"):
        p.unlink()
    assert f.load_latest()[1] == {"epoch": 2}
    # ... but once manifests exist, one without is an unfinished write
    f.save_checkpoint(3, [np.zeros(3, np.float32)], {"epoch": 3})
    f.save_checkpoint(4, [np.zeros(3, np.float32)], {"epoch": 4})
    f.manifest_of(f.checkpoint_path(4)).unlink()
    assert RunFolder(f.root).load_latest()[1] == {"epoch": 3}


def test_retention_never_keeps_a_damaged_checkpoint_in_place_of_a_valid_one(tmp_path):
    f = _run_with_checkpoints(tmp_path / "run", (1, 2, 3))
    _damage(f.checkpoint_path(3), "bit-flipped")  # newest damaged: resume from 2
    _damage(f.checkpoint_path(2), "truncated")  # and the one before: from 1? gone (KEEP=2)
    f = RunFolder(f.root)
    with pytest.raises(UserError):
        f.load_latest()
    g = _run_with_checkpoints(tmp_path / "g", (1, 2, 3))
    _damage(g.checkpoint_path(2), "bit-flipped")
    g.save_checkpoint(4, [np.zeros(3, np.float32)], {"epoch": 4})
    # 2 was damaged: it does not count toward KEEP, so 3 stays beside 4; 2 moved aside
    assert g.kept_epochs() == [3, 4]
    assert sorted(p.name for p in g.corrupt.iterdir()) == ["epoch-00002.json", "epoch-00002.npz"]
    # the case: damaged checkpoints with higher epochs than the ones now written
    h = _run_with_checkpoints(tmp_path / "h", (1, 2, 6))
    _damage(h.checkpoint_path(6), "zero-filled")
    for e in (3, 4, 5):
        h.save_checkpoint(e, [np.zeros(3, np.float32)], {"epoch": e})
    assert h.kept_epochs() == [4, 5, 6]  # the two newest valid stay; 6 waits to be rewritten
    h.save_checkpoint(6, [np.zeros(3, np.float32)], {"epoch": 6})
    assert h.kept_epochs() == [5, 6] and h.verify(h.checkpoint_path(6)) is None


def test_two_writers_the_second_gets_one_line_naming_the_holder(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    root = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from epsresnet_tf.runfolder import RunFolder; "
            "RunFolder(sys.argv[1]).open(); print('locked', flush=True); time.sleep(60)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as err:
            RunFolder(root).open()
        msg = str(err.value)
        assert "\n" not in msg and "in use by another `epsresnet train`" in msg
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg
    finally:
        holder.kill()  # kill -9: the OS drops the lock; its file stays behind
        holder.wait()
    assert (root / RF.LOCK).read_text().startswith(f"pid {holder.pid}")
    capsys.readouterr()
    with RunFolder(root).open():  # the stale lock is taken over, with a message
        assert f"taking over the lock left by pid {holder.pid}" in capsys.readouterr().err
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):  # a second fd
            RunFolder(root).open()
    assert not (root / RF.LOCK).exists()  # released: no stale lock to take over


def test_restart_moves_the_old_run_aside(tmp_path):
    f = _run_with_checkpoints(tmp_path / "run")
    before = _snapshot(f.root)
    with RunFolder(f.root).open(restart=True) as g:
        assert [p.name for p in g.root.iterdir()] == [RF.LOCK]
        assert g.check_or_create(resolve_config(CFG)) is False
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert _snapshot(aside) == before


def test_out_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("")
    for root in (tmp_path / "runs", tmp_path / "runs" / "demo"):
        with pytest.raises(UserError, match="choose another --out") as err:
            RunFolder(root).open()
        assert "\n" not in str(err.value)


def test_stale_temporary_files_are_swept_at_start(tmp_path, capsys):
    import socket

    f = _run_with_checkpoints(tmp_path / "run", (1,))
    host = socket.gethostname().replace("-", "_")
    dead = [
        f.ckpt / ".tmp-abc123.npz",  # this package's older name
        f.ckpt / f".epoch-00002.npz.tmp-999999999@{host}-x1.npz",
        f.root / f".history.jsonl.tmp-999999999@{host}-x2",
        f.root / ".model.tmp.keras",
    ]
    live = f.root / f".config.json.tmp-{os.getpid()}@{host}-x3"
    other = f.root / ".config.json.tmp-12@elsewhere-x4"  # another host's: a day's grace
    for p in (*dead, live, other):
        p.write_bytes(b"partial")
    with f.open():
        pass
    assert not any(p.exists() for p in dead) and live.exists() and other.exists()
    assert capsys.readouterr().err.count("left by an interrupted write") == 4


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with RunFolder(tmp_path / "run").open() as f:
            f.check_or_create(resolve_config(CFG))
            f.save_checkpoint(1, [np.zeros(2, np.float32)], {"epoch": 1})
            f.write_history([{"epoch": 1}])
            RF.atomic_write_bytes(f.root / "x.bin", b"x")
            assert (f.root / RF.LOCK).stat().st_mode & 0o777 == 0o644
        for p in f.root.rglob("*"):
            assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p
        os.umask(0o077)
        RF.atomic_write_text(f.root / "private", "x")
        assert (f.root / "private").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def _temporary_files(root):
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def test_disk_full_during_a_checkpoint_leaves_no_temporary_file_and_loses_nothing(
    tmp_path, monkeypatch
):
    import errno

    f = _run_with_checkpoints(tmp_path / "run", (1, 2))
    before = _snapshot(f.root)
    real = np.savez

    def full(file, *a, **k):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.np, "savez", full)
    with pytest.raises(UserError, match="no space left writing .*epoch-00003.npz") as err:
        f.save_checkpoint(3, [np.zeros(3, np.float32)], {"epoch": 3})
    assert "\n" not in str(err.value) and " free)" in str(err.value)
    assert _temporary_files(f.root) == [] and _snapshot(f.root) == before
    monkeypatch.setattr(checkpoint_io.np, "savez", real)

    def full_write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_io.Path, "write_bytes", full_write)
    with pytest.raises(UserError, match=r"history.jsonl \(.* needed, .* free\)"):
        f.write_history([{"epoch": 1}])
    assert _temporary_files(f.root) == [] and _snapshot(f.root) == before
    assert RunFolder(f.root).load_latest()[1] == {"epoch": 2}


@pytest.mark.parametrize(
    "code, message",
    [("EROFS", "read-only file system"), ("EACCES", "permission denied")],
)
def test_read_only_folder_is_one_line(tmp_path, monkeypatch, code, message):
    import errno
    import tempfile

    f = _run_with_checkpoints(tmp_path / "run", (1,))

    def refuse(*a, **k):
        raise OSError(getattr(errno, code), message)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only mount answers
    with pytest.raises(UserError, match=f"cannot write .*epoch-00002.npz: {message}") as err:
        f.save_checkpoint(2, [np.zeros(3, np.float32)], {"epoch": 2})
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_a_really_read_only_folder_is_one_line(tmp_path):
    f = _run_with_checkpoints(tmp_path / "run", (1,))
    f.ckpt.chmod(0o555)
    try:
        with pytest.raises(UserError, match="permission denied"):
            f.save_checkpoint(2, [np.zeros(3, np.float32)], {"epoch": 2})
    finally:
        f.ckpt.chmod(0o755)


# --- fault injection: a kill at every point of a checkpoint write --------------------------

KILLER = r"""
import os, sys, tempfile
import numpy as np
from epsresnet_tf.runfolder import RunFolder

root, point = sys.argv[1], int(sys.argv[2])
folder = RunFolder(root).open()
seen = [0]

def killing(real):
    def call(*a, **k):
        seen[0] += 1
        if seen[0] == point:
            os._exit(9)  # as kill -9: no finally, no clean-up
        return real(*a, **k)
    return call

for name in ("replace", "fsync", "fchmod", "unlink", "open", "close"):
    setattr(os, name, killing(getattr(os, name)))
tempfile.mkstemp = killing(tempfile.mkstemp)
real_savez = np.savez

def savez_half(f, **arrays):  # point -1: killed in the middle of writing the data
    import io
    buf = io.BytesIO()
    real_savez(buf, **arrays)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os._exit(9)

if point == -1:
    np.savez = savez_half
folder.save_checkpoint(3, [np.full((3,), 3, np.float32)], {"epoch": 3})
print("points", seen[0])
"""


def test_a_kill_at_any_point_of_a_checkpoint_write_resumes(tmp_path):
    import shutil
    import subprocess
    import sys

    base = _run_with_checkpoints(tmp_path / "base", (1, 2))
    point, outcomes = -1, set()
    while True:
        run = tmp_path / f"p{point}"
        shutil.copytree(base.root, run)
        child = subprocess.run(
            [sys.executable, "-c", KILLER, str(run), str(point)], capture_output=True, text=True
        )
        assert child.returncode in (0, 9), child.stderr
        f = RunFolder(run)
        with f.open():  # sweeps what the kill left, takes over its lock
            arrays, state = f.load_latest()
            assert state["epoch"] in (2, 3) and arrays[0].tolist() == [state["epoch"]] * 3
            outcomes.add(state["epoch"])
            f.save_checkpoint(3, [np.full((3,), 3, np.float32)], {"epoch": 3})
            f.save_checkpoint(4, [np.full((3,), 4, np.float32)], {"epoch": 4})
        assert f.kept_epochs() == [3, 4] and all(f.verify(p) is None for p in f.checkpoints())
        assert _temporary_files(run) == [] and not f.corrupt.exists()
        assert RunFolder(run).load_latest()[1] == {"epoch": 4}
        if child.returncode == 0:  # no point left: the write finished
            break
        point = 1 if point == -1 else point + 1
    assert outcomes == {2, 3} and point > 10
