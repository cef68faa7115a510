"""The `epsresnet` entry point: its parser imports no TensorFlow, `--version`, and what
reaches stderr — TensorFlow's own lines (C++ start-up notices, a CPU machine's cuInit
error, retracing warnings) only with `--verbose` / EPSRESNET_VERBOSE."""

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import _import_rules
import numpy as np
import pytest

import epsresnet_tf
from epsresnet_tf import cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = _import_rules.HEAVY


def run_python(*args, cwd=ROOT, pythonpath=()):
    """`python *args` with this checkout importable and none of the user's log settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.VERBOSE_ENV, "PYTHONPATH")
    }
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(ROOT)])
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


# --- start-up: no TensorFlow before a command needs it ------------------------------------


def test_the_parser_and_train_list_import_no_tensorflow():
    code = textwrap.dedent(f"""
        import sys
        from epsresnet_tf import cli
        cli.build_parser()
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        cli.main(["train", "--list"])
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[]" and lines[-1] == "[]"
    assert any(line.split()[:1] == ["demo"] for line in lines[1:-1])


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"epsresnet {epsresnet_tf.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", cli.version())


@pytest.mark.parametrize(
    "argv, verbose",
    [
        (["describe", "cifar-basic-20"], False),
        (["describe", "cifar-basic-20", "--verbose"], True),
        (["--verbose", "describe", "cifar-basic-20"], True),
        (["-v", "data", "list"], True),
    ],
)
def test_verbose_is_taken_before_or_after_the_command(argv, verbose):
    assert cli.build_parser().parse_args(argv).verbose is verbose


# --- noise ------------------------------------------------------------------------------


def test_a_command_that_runs_tensorflow_writes_nothing_to_stderr():
    # describe builds a Keras net: TensorFlow starts (oneDNN notice, no CUDA driver here)
    done = run_python("-m", "epsresnet_tf.cli", "describe", "cifar-basic-20", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["blocks"] == 9
    assert done.stderr == ""


def test_quiet_keeps_a_log_level_the_user_set(monkeypatch):
    tf_logger = logging.getLogger("tensorflow")
    monkeypatch.setattr(tf_logger, "level", tf_logger.level)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    cli.quiet_tensorflow(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    assert tf_logger.level == logging.ERROR
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    cli.quiet_tensorflow(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_verbose_lets_every_log_line_through(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    cli.quiet_tensorflow(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


FAKE_TENSORFLOW = """
import os
os.write(2, b"I0000 a C++ start-up notice\\n")
if os.environ.get("FAKE_TF_FAILS"):
    raise ImportError("no usable TensorFlow here")
"""


@pytest.mark.parametrize("fails", [False, True])
def test_tensorflow_import_notices_are_held_back_unless_the_import_fails(tmp_path, fails):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    code = textwrap.dedent(f"""
        import os, sys
        from epsresnet_tf import cli
        if {fails}:
            os.environ["FAKE_TF_FAILS"] = "1"
        cli.quiet_tensorflow(verbose=False)
        import tensorflow
        print(type(tensorflow.__loader__).__name__, type(tensorflow.__spec__.loader).__name__)
    """)
    done = run_python("-c", code, pythonpath=[tmp_path])
    if fails:
        assert done.returncode == 1
        assert done.stderr.startswith("I0000 a C++ start-up notice\n")
        assert "ImportError: no usable TensorFlow here" in done.stderr
    else:
        assert done.returncode == 0 and done.stderr == ""
        # afterwards the module is the plain one: its own loader, not our wrapper
        assert done.stdout.split() == ["SourceFileLoader", "SourceFileLoader"]


def test_error_rates_on_one_fresh_net_after_another_retrace_nothing(caplog):
    # ablate evaluates a new reduced net per removal, often on a batch or two: each net is
    # traced once, for every batch size, and TensorFlow has no retracing to warn about
    import keras

    from epsresnet_tf import evaluate

    caplog.set_level(logging.WARNING, logger="tensorflow")
    rng = np.random.RandomState(0)
    x, y = rng.rand(12, 4).astype("float32"), rng.randint(0, 3, 12)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]  # the second is a short last batch
    for seed in range(6):
        keras.utils.set_random_seed(seed)
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        expected = float(np.mean(np.argmax(np.asarray(net(x)), -1) != y))
        assert evaluate.error_rates(net, batches) == {"top1_error": expected, "images": 12}
    assert [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()] == []
