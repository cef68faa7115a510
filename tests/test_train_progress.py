"""What `epsresnet train` prints (epsresnet_tf.train.progress): the start line, one line per
epoch whose values are history.jsonl's, the events (a block discarded or restored, the
adaptive reset of the lr), the per-step bar, in one vocabulary: error, never accuracy."""

import contextlib
import io
import json
import re
import shutil

import keras
import pytest
from _sources import Synthetic, tiny

from epsresnet_tf import cli
from epsresnet_tf.train import progress
from epsresnet_tf.train.loop import run_training

NUMBER = r"([-+0-9.e]+)"
EPOCH_LINE = re.compile(
    rf"epoch (\d+)/(\d+): train error {NUMBER}%, loss {NUMBER}, val error {NUMBER}%, "
    rf"discarded {NUMBER} of (\d+) \({NUMBER}%\), lr {NUMBER}, ε {NUMBER}, [0-9.hms]+"
)


def history(run_dir):
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def discarded(row):
    return {b for b, v in row["blocks"].items() if v["discarded"] > progress.DISCARDED_ABOVE}


def check_epoch_line(match, row, epochs):
    """The line's numbers are the history row's, to the digits printed."""
    epoch, total, train, loss, val, count, blocks, ratio, lr, eps = match.groups()
    assert (int(epoch), int(total), int(blocks)) == (row["epoch"], epochs, len(row["blocks"]))
    assert float(train) == pytest.approx(100 * row["train_error"], abs=0.005)
    assert float(loss) == pytest.approx(row["loss"], rel=1e-3)
    assert float(val) == pytest.approx(100 * row["val_error"], abs=0.005)
    assert float(count) == pytest.approx(row["discarded_count"], abs=0.005)
    assert float(ratio) == pytest.approx(100 * row["discarded_ratio"], abs=0.05)
    assert float(lr) == pytest.approx(row["lr"], rel=1e-3)
    assert float(eps) == pytest.approx(row["epsilon"], rel=1e-3)


def test_quiet_is_one_line_per_epoch_with_historys_values(tmp_path, capsys):
    # The demo's ε = 5 discards blocks within the first epoch (ResNet-8 here: 3 blocks);
    # each event ends its epoch's one line.
    argv = ["train", "demo", "--depth", "8", "--epochs", "2", "--steps-per-epoch", "20"]
    argv += ["--val-steps", "2"]
    assert cli.main([*argv, "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "demo_depth8"
    rows = history(run_dir)
    lines = out.splitlines()
    assert lines[0] == f"training {run_dir}: 2 epochs"
    epoch_lines = lines[1:3]
    assert not lines[3].startswith("epoch ")  # then the summary's table: nothing else per epoch
    assert [line for line in lines if line.startswith("epoch")] == epoch_lines
    before = set()
    for line, row in zip(epoch_lines, rows):
        check_epoch_line(EPOCH_LINE.match(line), row, 2)
        now = discarded(row)
        gone, back = sorted(now - before), sorted(before - now)
        assert (f"; discarded in epoch {row['epoch']}: {', '.join(gone)}" in line) == bool(gone)
        assert (f"; restored in epoch {row['epoch']}: {', '.join(back)}" in line) == bool(back)
        before = now
    assert discarded(rows[0]), "the demo's ε discards blocks in epoch 1: no event was tested"
    last = rows[-1]
    assert lines[-1] == (
        f"{run_dir}: epoch 2, train error {100 * last['train_error']:.2f}%, val error "
        f"{100 * last['val_error']:.2f}%, discarded {last['discarded_count']:.2f} of 3 "
        f"({last['discarded_ratio']:.1%})"
    )
    assert not re.search(r"\bacc|accuracy", out, re.IGNORECASE)


ANSI = re.compile(r"\x1b\[[0-9;]*[mK]")


def tiny_sources():
    return Synthetic(num_batches=3), Synthetic(num_batches=2)


@pytest.fixture(scope="module")
def reset_run(tmp_path_factory):
    """Three tiny validated epochs at verbose 1, the bar drawn as on a 120-column terminal:
    ε = 0 in epoch 1, then an ε above every block's |F| (all three blocks discarded in
    epoch 2, the count rising by ~3), so the adaptive reset after epoch 2 sets 0.05 where
    the standard schedule says 0.001. Returns the run folder, its history and stdout."""
    cfg = tiny(
        epsilon=1000.0,
        epsilon_start_epoch=1,
        lr_schedule=[[0, 0.01], [2, 0.001]],
        adaptive_schedule=[[0, 0.05], [1, 0.02], [5, 0.005]],
    )
    run_dir = tmp_path_factory.mktemp("progress") / "reset"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(progress, "shows_bar", lambda verbose: verbose == 1)  # as on a terminal
        mp.setenv("COLUMNS", "120")
        result = run_training(cfg, run_dir, sources=tiny_sources(), verbose=1)
    assert result["history"] == history(run_dir)
    return cfg, run_dir, result["history"], out.getvalue()


def test_events_are_lines_of_their_own_and_the_bar_says_error(reset_run):
    _, run_dir, rows, out = reset_run
    lines = ANSI.sub("", out).replace("\r", "\n").splitlines()
    assert lines[0] == f"training {run_dir}: 3 epochs"
    epoch_at = {int(m.group(1)): i for i, m in enumerate(map(EPOCH_LINE.match, lines)) if m}
    assert sorted(epoch_at) == [1, 2, 3]
    for row in rows:
        check_epoch_line(EPOCH_LINE.match(lines[epoch_at[row["epoch"]]]), row, 3)
    i = epoch_at[2]
    assert discarded(rows[0]) == set() and len(discarded(rows[1])) == 3
    assert lines[i + 1] == "  discarded in epoch 2: " + ", ".join(sorted(discarded(rows[1])))
    # the reset, said between epoch 2's line and epoch 3's bar, with the lr epoch 3 then had
    assert rows[2]["lr"] == pytest.approx(0.05)
    assert lines[i + 2] == (
        f"  adaptive reset after epoch 2 (discarded_count {rows[1]['discarded_count']:.2f}): "
        "lr 0.05 from epoch 3"  # the next entry, for epoch 4, is past the run's last epoch
    )
    bar = [line for line in lines if re.match(r"\d/3 ━", line)]
    assert bar and all("train error %:" in line and "loss:" in line for line in bar)
    assert any("lr: 0.0500" in line and "ε: 1000.0000" in line for line in bar)
    assert not re.search(r"\bacc|accuracy", out, re.IGNORECASE)


def test_a_resumed_quiet_run_says_where_it_continues_and_the_reset(reset_run, tmp_path, capsys):
    # The run above without its last checkpoint: it resumes after epoch 2, decides the reset
    # again, and says it at the end of epoch 3's one line.
    cfg, run_dir, rows, _ = reset_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    for path in (copy / "ckpt").glob("epoch-00003.*"):
        path.unlink()
    again = run_training(cfg, copy, sources=tiny_sources(), verbose=2)["history"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resuming {copy} after epoch 2 of 3"
    assert len(lines) == 2
    line, reset = lines[1].split("; ")
    check_epoch_line(EPOCH_LINE.match(line), again[2], 3)
    count = rows[1]["discarded_count"]
    assert (
        reset == f"adaptive reset after epoch 2 (discarded_count {count:.2f}): lr 0.05 from epoch 3"
    )
    assert again[2]["lr"] == pytest.approx(0.05)


def test_restored_blocks_and_schedule_text():
    row = {
        "epoch": 7,
        "blocks": {"group0/block0": {"discarded": 0.9}, "group1/block2": {"discarded": 0.1}},
    }
    before = {"blocks": {"group0/block0": {"discarded": 0.2}, "group1/block2": {"discarded": 0.99}}}
    assert progress.discard_changes(before, row) == [
        "discarded in epoch 7: group0/block0",
        "restored in epoch 7: group1/block2",
    ]
    assert progress.discard_changes(row, row) == []
    from epsresnet_tf.train.schedules import AdaptiveResetSchedule

    sched = AdaptiveResetSchedule([[0, 0.1]], [[0, 0.1], [6, 0.01]])
    assert sched.lr_for_epoch(3, [0.0, 0.0, 0.0]) is None and sched.reset_at(3) is None
    assert sched.lr_for_epoch(4, [0.0, 0.0, 0.0, 2.0]) == 0.1
    assert progress.reset_text(4, sched.reset_at(4), "discarded_count", 2.0, 15) == (
        "adaptive reset after epoch 4 (discarded_count 2.00): lr 0.1 from epoch 5, "
        "lr 0.01 from epoch 11"
    )


@pytest.mark.parametrize("columns, names", [(120, 4), (100, 3), (80, 2)])
def test_the_bar_fits_the_terminal(columns, names, monkeypatch, capsys):
    # Progbar's line, wrapped, would be redrawn as new rows each step: it leaves out ε, then
    # lr, and narrows until it fits.
    monkeypatch.setenv("COLUMNS", str(columns))
    bar = progress.StepBar(179, {"epsilon": "ε"})
    assert len(bar.names) == names
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.SGD(1.0e-4))
    net.hyper_values = lambda: {"epsilon": 2.5}
    bar.draw(123, net, {"acc": 0.9876, "loss": 12.3456})
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out.split("\r")[-1])
    assert shown.startswith("123/179") and len(shown) < columns, shown
    assert "train error %: 1.2400" in shown
