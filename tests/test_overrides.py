"""`epsresnet train` overrides on a real (tiny) run of the demo recipe: --print-config shows
what config.json gets, a finished run extended with --epochs resumes, a change of what it
computes is refused in one line, and the data folder it trained with is reused by a resume,
`compress`, `evaluate` and `ablate` when --data-dir is not given. (Parsing, names and
validation: tests/test_config.py; extending and --init-from in the loop:
tests/test_train_resume.py.)"""

import json
import shutil

import pytest

from epsresnet_tf import cli
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import RunFolder

NAME = "demo_depth8"  # the recipe's name and the overrides
TINY = ["--depth", "8", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1"]


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(run folder, its data folder, the --print-config output before training)."""
    root = tmp_path_factory.mktemp("overrides")
    data, out = root / "mydata", root / "runs"
    data.mkdir()
    args = ["train", "demo", *TINY, "--out", str(out), "--data-dir", str(data), "--quiet"]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main([*args, "--print-config"]) == 0
    assert not out.exists()  # --print-config wrote nothing
    assert cli.main(args) == 0
    return out / NAME, data, printed.getvalue()


def test_print_config_is_the_config_training_stores(demo_run):
    run, _, printed = demo_run
    assert printed == (run / "config.json").read_text()
    assert json.loads(printed)["name"] == NAME


def test_the_data_folder_is_recorded_outside_the_config(demo_run):
    run, data, _ = demo_run
    assert RunFolder(run).data_dir() == data.resolve()
    assert "data_dir" not in json.loads((run / "config.json").read_text())


def test_extend_with_more_epochs_then_a_refused_change(demo_run, tmp_path, capsys):
    run, data, _ = demo_run
    out = tmp_path / "runs"
    mine = shutil.copytree(run, out / NAME)
    more = ["train", "demo", *TINY[:2], "--epochs", "2", *TINY[4:], "--out", str(out)]
    # no --name: epochs is not part of the name, so the same command extends the run; no
    # --data-dir: the folder the run trained with (the default ./data is not there)
    assert cli.main([*more, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "after epoch 1" in printed and "epochs 1 -> 2" in printed
    folder = RunFolder(mine)
    assert [r["epoch"] for r in folder.read_history()] == [1, 2]
    assert folder.read_config()["epochs"] == 2
    assert folder.read_changes()[0]["changes"] == {"epochs": {"old": 1, "new": 2}}
    assert folder.data_dir() == data.resolve()  # trained with it again
    before = _snapshot(mine)
    code = cli.main([*more, "--name", NAME, "--epsilon", "3", "--data-dir", str(data)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "another config (epsilon: 5.0 -> 3.0)" in err
    assert "--name" in err and "--restart" in err
    assert _snapshot(mine) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["compress", "{run}"],
        ["evaluate", "{run}"],
        ["ablate", "{run}", "--out", "{tmp}/a.json"],
    ],
)
def test_commands_on_a_run_reuse_its_data_folder(demo_run, argv, tmp_path, monkeypatch, capsys):
    """They used to look in $EPSRESNET_DATA or ./data whatever the run trained on."""
    from epsresnet_tf.data import pipeline

    run, data, _ = demo_run
    seen = []

    def eval_batches(dataset, split, data_dir, *args, **kw):
        seen.append(str(data_dir))
        raise UserError("stop here")  # the folder is what this test is about

    monkeypatch.setattr(pipeline, "eval_batches", eval_batches)
    monkeypatch.setenv("EPSRESNET_DATA", str(tmp_path / "elsewhere"))
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    assert seen == [str(data.resolve())]
    assert cli.main([*argv, "--data-dir", str(tmp_path)]) == 2  # given: it wins
    assert seen[-1] == str(tmp_path)
    assert "stop here" in capsys.readouterr().err
