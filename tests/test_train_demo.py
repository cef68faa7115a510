"""`make demo`: the whole loop on scikit-learn's digits (shipped with the package, so nothing
to download) — train until blocks are discarded, compress to a smaller standard ResNet that
predicts the same, report."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from _deployed import assert_deployed_batch_independent

from epsresnet_tf import cli, recipes

ROOT = Path(__file__).resolve().parents[1]


def demo_commands(out):
    """The `epsresnet` command lines `make demo OUT=out` runs, read from the Makefile."""
    text = subprocess.run(
        ["make", "-n", "-o", "install", "demo", f"OUT={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = []
    for line in text.splitlines():
        words = [w for w in shlex.split(line) if "=" not in w or w.startswith("-")]  # no VAR=value
        if words and words[0].endswith("bin/epsresnet"):
            commands.append(words[1:])
    return commands


def test_make_demo_is_train_compress_ablate_report_with_nothing_to_download(tmp_path):
    cmds = demo_commands(tmp_path)
    assert [c[0] for c in cmds] == ["train", "compress", "ablate", "report"]
    assert cmds[0][:2] == ["train", "demo"]
    assert all(str(tmp_path / "demo") in c for c in cmds[1:])
    assert not any("--data-dir" in c for c in cmds)  # the data set ships with scikit-learn
    cfg = recipes.resolve("demo")[1]
    assert cfg["dataset"] == "digits" and cfg["gate"] == "eps"


@pytest.mark.slow  # the demo's 15 epochs, then compress: ~1.5 min on 2 cores
def test_demo_recipe_discards_blocks_and_compresses(tmp_path):
    """The demo recipe (15 epochs on 8x8 images) discards blocks, and the
    certificate removes them: gate 0 on every train and test batch, not just a high EMA."""
    from epsresnet_tf.compress import compress_run
    from epsresnet_tf.train.loop import run_training

    name, cfg = recipes.resolve("demo")
    run = tmp_path / name
    result = run_training(cfg, run, "no-data-folder-needed", verbose=0)
    assert result["status"] == "done"
    last = result["history"][-1]
    gone = [b for b, v in last["blocks"].items() if v["discarded"] >= 0.9]
    assert len(gone) >= 3, last["blocks"]
    assert last["val_error"] < 0.15  # it learned (10 classes: chance is 0.9)
    doc = compress_run(run, "no-data-folder-needed")
    assert doc["removed_count"] >= 3 and doc["equivalence"]["passed"]
    assert doc["after"]["trainable_params"] < doc["before"]["trainable_params"]
    # issue 26: a kept gate was not open on every certified batch (it decides per batch in
    # the gated net, whose error one image at a time is worse); the export decided it once
    cert = assert_deployed_batch_independent(run, "no-data-folder-needed")
    dep = cert["deployment"]
    assert any(d["verdict"] == "mixed" for d in dep["gates"].values()), dep["gates"]
    assert dep["gated_test_error"]["batch_1"] > dep["test_error"]["batch_1"]
    assert dep["test_error"]["batch_1"] == dep["test_error"]["run_batch"]


@pytest.mark.slow  # the whole `make demo` (15 epochs, compress, ablate, report): ~1.5 min on 2 cores
def test_make_demo_end_to_end(tmp_path, capsys):
    for argv in demo_commands(tmp_path):
        assert cli.main(argv) == 0, argv
    run = tmp_path / "demo"
    rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    # the blocks close within the first epoch (before the reset could see two values) and
    # stay closed: the count's moving average holds at 3 to the end
    assert rows[-1]["discarded_count"] >= 3 - 1e-3
    assert sum(v["discarded"] >= 0.99 for v in rows[-1]["blocks"].values()) >= 3
    assert rows[-1]["val_error"] < 0.15
    cert = json.loads((run / "reduced" / "certificate.json").read_text())
    assert cert["removed_count"] >= 3 and cert["equivalence"]["passed"]
    for name in ("tables.md", "strip.png", "removal_curves.png"):
        assert (run / "report" / name).is_file(), name
    # issue 26: the exported net's error one image at a time, beside the gated net's
    dep = cert["deployment"]
    alone, gated = dep["test_error"]["batch_1"], dep["gated_test_error"]["batch_1"]
    assert (
        f"{100 * alone:.2f}% (gated {100 * gated:.2f}%)"
        in (run / "report" / "tables.md").read_text()
    )
    assert "removed" in capsys.readouterr().out
