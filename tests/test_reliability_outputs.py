"""Reliability of what the commands write and read (issue 13, points 6 and 8): `--force`
builds the new outputs beside the old ones and swaps them in last, so a failure keeps the old
ones whole; damaged inputs and Ctrl-C end in one line, never a traceback."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf import compress as C
from epsresnet_tf import figures as FIG
from epsresnet_tf import report as R
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.models import build_model
from epsresnet_tf.outputs import recover, staged_outputs
from epsresnet_tf.report import writer as report_writer
from epsresnet_tf.runfolder import read_run

ARCH = "cifar-basic-14"
CONFIG = {
    "arch": ARCH,
    "dataset": "cifar10",
    "gate": "eps",
    "epsilon": 2.5,
    "gate_scope": "batch",
    "batch_size": 8,
    "model_options": {},
    "weight_decay": 2e-4,
}


def one_line(capsys, argv, code=2):
    """Run the CLI; check the exit code and that stderr is one line without a traceback."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(parent):
    return [p.name for p in parent.iterdir() if ".new-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder: config.json, model.keras (two blocks closed), a short history."""
    root = tmp_path_factory.mktemp("runs") / "r"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(CONFIG))
    run = read_run(root)
    model = build_model(run.arch, **run.build_options)
    for bid, gate in gate_by_block(model).items():
        gate.epsilon.assign(1e6 if bid in ("group0/block1", "group1/block0") else 0.0)
    model.save(root / "model.keras")
    rows = [{"epoch": e, "lr": 0.1, "epsilon": 2.5, "val_error": 0.5} for e in (1, 2)]
    (root / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _compress(run_dir, out, **kw):
    run = read_run(run_dir)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    x = np.random.RandomState(0).randn(16, 32, 32, 3).astype("float32")
    data = [x[:8], x[8:]]
    return C.compress_model(
        model,
        run.arch,
        run.build_options,
        C.CompressData({"test": data}, data, batch_size=8),
        out,
        C.CompressOptions(**kw),
    )


# --- point 6: --force swaps the new outputs in at the end ------------------------------


def test_compress_force_failing_mid_export_keeps_the_old_outputs(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "reduced"
    _compress(run_dir, out)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert {"reduced.keras", "certificate.json", "saved_model/saved_model.pb"} <= set(before)

    def export_fails(self, *a, **k):  # reduced.keras is already written when this runs
        assert any(p.name == "reduced.keras" for p in tmp_path.rglob("reduced.new-*/*"))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "export", export_fails)
    with pytest.raises(OSError, match="No space"):
        _compress(run_dir, out, force=True)
    assert snapshot(out) == before  # complete and byte-identical
    assert leftovers(tmp_path) == []


def test_compress_force_replaces_ours_and_keeps_other_files(run_dir, tmp_path):
    out = tmp_path / "reduced"
    _compress(run_dir, out)
    (out / "notes.txt").write_text("mine")
    doc = _compress(run_dir, out, force=True, export=False)
    assert sorted(p.name for p in out.iterdir()) == ["certificate.json", "notes.txt"]
    assert json.loads((out / "certificate.json").read_text())["removed"] == doc["removed"]
    assert leftovers(tmp_path) == []


def test_report_force_failing_mid_figures_keeps_the_old_report(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "report"
    R.make_report([run_dir], out)
    (out / "tables.md").write_text("the old report\n")  # so an overwrite in place shows
    before = snapshot(out)
    assert "tables.md" in before

    def draw_fails(r, path):  # tables.md of the new report is written by now
        raise RuntimeError("figure failed")

    monkeypatch.setitem(FIG.REGISTRY, FIG.RUN, [("boom", draw_fails, lambda r: True)])
    with pytest.raises(RuntimeError, match="figure failed"):
        R.make_report([run_dir], out, force=True)
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_swap_killed_half_way_is_finished_or_undone(tmp_path):
    pid = _dead_pid()
    out, new, old = (tmp_path / n for n in ("o", f"o.new-{pid}", f"o.old-{pid}"))
    # Killed between the two renames: the new folder was complete, so it goes in.
    new.mkdir()
    (new / "certificate.json").write_text("new")
    old.mkdir()
    (old / "certificate.json").write_text("old")
    (old / "notes.txt").write_text("mine")
    recover(out, owned=("certificate.json",))
    assert snapshot(out) == {"certificate.json": b"new", "notes.txt": b"mine"}
    # Killed while building: the partial new folder goes, the old outputs stay.
    new.mkdir()
    (new / "certificate.json").write_text("partial")
    with staged_outputs(out, owned=("certificate.json",)) as stage:
        (stage / "certificate.json").write_text("newer")
    assert snapshot(out) == {"certificate.json": b"newer", "notes.txt": b"mine"}
    assert leftovers(tmp_path) == []


def test_ctrl_c_inside_the_staged_block_leaves_nothing(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs(out) as stage:
            (stage / "a").write_text("half")
            raise KeyboardInterrupt
    assert snapshot(out) == {"a": b"old"} and leftovers(tmp_path) == []


# --- point 8: one line where a traceback was -------------------------------------------


def _copy_run(run_dir, tmp_path):
    import shutil

    return shutil.copytree(run_dir, tmp_path / "r")


def test_garbled_config_json_is_one_line(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    (run / "config.json").write_text('{"arch": "cifar-basic-14", "data')
    for argv in (
        ["compress", run, "--data-dir", tmp_path],
        ["report", run],
        ["evaluate", run / "model.keras", "--data-dir", tmp_path],
    ):
        line = one_line(capsys, argv)
        assert "config.json is not valid JSON" in line


def test_garbled_config_json_on_train_resume_is_one_line(tmp_path, capsys):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{garbled")
    line = one_line(capsys, ["train", "demo", "--out", tmp_path / "runs", "--data-dir", tmp_path])
    assert "config.json" in line


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_evaluate_on_a_damaged_keras_file_is_one_line(run_dir, tmp_path, capsys, damage):
    path = tmp_path / "model.keras"
    data = (run_dir / "model.keras").read_bytes()
    path.write_bytes(bytes(len(data)) if damage == "zeroed" else data[: len(data) // 2])
    line = one_line(capsys, ["evaluate", path, "--dataset", "cifar10", "--data-dir", tmp_path])
    assert "is not a readable .keras file" in line and "not found" not in line


def test_report_on_a_garbled_history_names_the_file_and_line(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    lines = (run / "history.jsonl").read_text().splitlines()
    (run / "history.jsonl").write_text(lines[0] + "\n" + lines[1][:20] + "\xff\n")
    line = one_line(capsys, ["report", run])
    assert "history.jsonl, line 2: not valid JSON" in line


def _flipped_mnist(shared_data, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for src in (shared_data / "mnist-subset").glob("*.gz"):
        data = bytearray(src.read_bytes())
        if src.name.startswith("train-images"):
            data[1000:1040] = bytes(b ^ 0xFF for b in data[1000:1040])
        (folder / src.name).write_bytes(bytes(data))
    return tmp_path


def test_mnist_gz_with_flipped_bytes_is_one_line(shared_data, tmp_path, capsys):
    root = _flipped_mnist(shared_data, tmp_path)
    line = one_line(capsys, ["data", "check", "mnist", "--data-dir", root, "--no-throughput"])
    assert "train-images-idx3-ubyte.gz: not a valid IDX file" in line
    argv = ["train", "gates-mnist-plain-50", "--epochs", "1", "--steps-per-epoch", "1"]
    line = one_line(capsys, argv + ["--out", tmp_path / "runs", "--data-dir", root, "--quiet"])
    assert "train-images-idx3-ubyte.gz: not a valid IDX file" in line


def test_recipe_with_a_string_schedule_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "fast.json"
    recipe.write_text(json.dumps({**CONFIG, "lr_schedule": "fast"}))
    line = one_line(capsys, ["train", recipe, "--out", tmp_path / "runs"])
    assert "lr_schedule must be a list of [epoch, value] pairs" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["compress", "report", "ablate", "evaluate", "data"])
def test_ctrl_c_is_one_line_and_exit_130(run_dir, tmp_path, capsys, monkeypatch, command):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    import epsresnet_tf.cli.data as check  # the CLI layer's own names for what it calls
    import epsresnet_tf.cli.evaluate as E
    import epsresnet_tf.compress.load as compress_load  # where compress looks load_net up

    where = {
        "compress": (compress_load, "load_net"),
        "report": (report_writer, "tables"),
        "ablate": (E, "load_net"),
        "evaluate": (E, "load_net"),
        "data": (check, "split_stats"),
    }[command]
    monkeypatch.setattr(*where, interrupted)
    argv = {
        "compress": ["compress", run_dir, "--out", tmp_path / "c"],
        "report": ["report", run_dir, "--out", tmp_path / "rep"],
        "ablate": ["ablate", run_dir, "--out", tmp_path / "a.json"],
        "evaluate": ["evaluate", run_dir / "model.keras"],
        "data": ["data", "check", "digits", "--no-throughput"],
    }[command]
    assert one_line(capsys, argv, code=130).endswith(": interrupted")
    assert leftovers(tmp_path) == [] and not (tmp_path / "rep").exists()
