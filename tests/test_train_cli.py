"""`epsresnet train`: --help, --list, one-line errors that write nothing. (What recipes
resolve to: tests/test_config.py.)"""

import pytest

from epsresnet_tf import cli


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
    ):
        assert flag in text, flag


def test_list(capsys):
    assert cli.main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-eps-110" in out and "imagenet-eps-152-e1.8" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-recipe"], "unknown recipe"),
        (["cifar10-eps-110", "--depth", "111"], "invalid depth"),
        (["cifar10-eps-110", "--epsilon", "-1"], "--epsilon must be >= 0"),
        (["cifar10-eps-110", "--epochs", "ten"], "--epochs expects an integer"),
        (["cifar10-eps-110", "--gpus", "64"], "GPUs"),
        (["sharesnet-cifar10-164", "--depth", "200"], "--depth does not apply"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "runs"
    code = cli.main(["train", *argv, "--out", str(out), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
