"""`epsresnet train`: --help, --list, one-line errors that write nothing. (What recipes
resolve to: tests/test_config.py.)"""

import json

import pytest

from epsresnet_tf import cli, recipes


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--depth",
        "--epsilon",
        "--epochs",
        "--data-dir",
        "--out",
        "--gpus",
        "--seed",
        "--batch-size",
        "--steps-per-epoch",
        "--val-steps",
        "--mixed-precision",
        "--xla",
        "--list",
        "--name",
        "--deterministic",
        "--quiet",
        "--lr",
        "--weight-decay",
        "--set",
        "--init-from",
        "--print-config",
    ):
        assert flag in text, flag


def test_list(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # an 80-column terminal
    assert cli.main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-eps-110" in out and "imagenet-eps-152-e1.8" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    full = recipes.load("demo")["description"]
    assert full not in out and "…" in out
    assert cli.main(["train", "--list", "--long"]) == 0  # the whole descriptions
    assert full in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-recipe"], "unknown recipe"),
        # a typo gets the nearest names by edit distance, as --set keys do
        (["dmeo"], "unknown recipe 'dmeo' (did you mean demo?)"),
        (["cifar10-eps-11"], "(did you mean cifar10-eps-110"),
        (["cifar10-eps-110", "--depth", "111"], "invalid depth"),
        (["cifar10-eps-110", "--epsilon", "-1"], "--epsilon must be >= 0"),
        (["cifar10-eps-110", "--epochs", "ten"], "--epochs expects an integer"),
        (["cifar10-eps-110", "--gpus", "64"], "GPUs"),
        (["sharesnet-cifar10-164", "--depth", "200"], "--depth does not apply"),
        (
            ["demo", "--set", "learning_rate=0.05"],
            "--set learning_rate=0.05: unknown config key 'learning_rate'; did you mean "
            "lr_schedule (--lr scales it)?",
        ),
        (["demo", "--set", "side_head=maybe"], "side_head must be true or false, got 'maybe'"),
        (["demo", "--set", "epochs=3", "--epochs", "4"], "epochs given twice"),
        (["demo", "--lr", "0"], "--lr must be a positive number"),
        (["demo", "--weight-decay", "-1"], "--weight-decay must be >= 0"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "runs"
    code = cli.main(["train", *argv, "--out", str(out), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_print_config_prints_the_resolved_config_and_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a write to ./runs or ./data would show here
    args = ["cifar10-eps-110", "--depth", "20", "--epochs", "2", "--lr", "0.05"]
    sets = ["--set", "weight_decay=5e-4", "--set", "keep_checkpoints_every=10"]
    assert cli.main(["train", *args, *sets, "--print-config", "--out", "runs"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(tmp_path.iterdir()) == []
    name, cfg = recipes.resolve(
        "cifar10-eps-110",
        depth=20,
        lr=0.05,
        epochs=2,
        weight_decay=5e-4,
        keep_checkpoints_every=10,
    )
    assert printed == cfg and printed["name"] == name == "cifar10-eps-20_weight_decay0.0005_lr0.05"
    assert printed["arch"] == "cifar-basic-20" and printed["lr_schedule"][1] == [82, 0.005]


def test_init_from_is_recorded_as_an_absolute_path_and_names_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for how in (["--init-from", "runs/demo"], ["--set", "init_from=runs/demo"]):
        assert cli.main(["train", "demo", *how, "--print-config"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["init_from"] == str(tmp_path / "runs" / "demo")
        assert printed["name"] == "demo_from-demo"
    assert list(tmp_path.iterdir()) == []


def test_make_tensorboard_listens_on_localhost_unless_asked():
    """The dashboard shows every run: not on the network by default (TB_HOST opens it)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def command(*assignments):
        out = subprocess.run(
            ["make", "-n", "-o", "install", "tensorboard", *assignments],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line for line in out.splitlines() if "bin/tensorboard " in line)

    assert "--host localhost" in command() and "--bind_all" not in command()
    assert "--host 0.0.0.0" in command("TB_HOST=0.0.0.0")


def test_a_missing_data_folder_says_how_to_get_the_data(tmp_path, capsys):
    out, missing = tmp_path / "runs", tmp_path / "no-data-here"
    code = cli.main(["train", "cifar10-eps-110", "--data-dir", str(missing), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"data folder {missing} does not exist" in err and "make data-cifar10" in err
    assert "cifar-10-batches-py" in err  # the layout it expects
    assert not out.exists() and not missing.exists()
