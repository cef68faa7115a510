"""The TensorBoard output of training (epsresnet_tf/train/dashboard.py), read back from the
event files with TensorBoard's own reader: the custom-scalars layout names tags that are
written, train and validation share tags in two runs, per-step scalars come at the
interval, the strip is a readable image, the config is there as text."""

import json
import re

import numpy as np
import pytest
from _sources import Synthetic, tiny

from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import RunFolder
from epsresnet_tf.train import dashboard as D
from epsresnet_tf.train.loop import run_training

STEPS, EVERY, EPOCHS = 5, 3, 3  # per-step scalars at global steps 3, 6, 9, 12, 15
KEPT = np.array([0x9E, 0xCA, 0xE1])  # the strip's colour of a kept block (EMA of 1-T = 0)
LR, RESET_LR = 0.05, 0.02


def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _values(acc, tag):
    import tensorflow as tf

    return [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # ε = 0 in epoch 1 (every gate open: nothing discarded, the strip's worst case), then
    # a huge ε (every block discarded): the count jumps by 3 and the adaptive reset fires
    # after epoch 2, so epoch 3 trains at the reset lr.
    cfg = tiny(
        epochs=EPOCHS,
        epsilon=1000.0,
        epsilon_start_epoch=1,
        lr_schedule=[[0, LR]],
        adaptive_schedule=[[0, RESET_LR]],
        val_steps=None,
        summary_every_steps=EVERY,
    )
    root = tmp_path_factory.mktemp("dash") / "run"
    sources = (Synthetic(num_batches=STEPS), Synthetic(num_batches=2, seed=7))
    result = run_training(cfg, root, sources=sources, verbose=0)
    assert result["status"] == "done"
    folder = RunFolder(root)
    return cfg, result["history"], _accumulator(folder.tb_train), _accumulator(folder.tb_validation)


def _layout(acc):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (_, content), *_ = _values(acc, metadata.CONFIG_SUMMARY_TAG)
    return layout_pb2.Layout.FromString(content.item())


def test_layout_names_only_tags_that_are_written(run):
    _, _, train, val = run
    written = set(train.Tags()["tensors"]) | set(val.Tags()["tensors"])
    layout = _layout(train)
    titles = [c.title for c in layout.category]
    assert titles[0] == "discarding"
    regexes = [r for c in layout.category for chart in c.chart for r in chart.multiline.tag]
    for regex in regexes:
        assert any(re.match(regex, t) for t in written), f"{regex} matches no written tag"
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    lr_chart = next(tags for title, tags in charts.items() if title.startswith("learning rate"))
    assert lr_chart == ["^schedule/lr$", "^schedule/lr_reset$"]
    ratio = next(tags for title, tags in charts.items() if title.startswith("discarded ratio"))
    assert ratio == ["^discarding/ratio$", "^discarding/ratio_authors$"]
    # a chart per group and field, every block of the group one line of it
    for g in range(3):  # cifar-basic-8: 3 groups of 1 block
        assert charts[f"group {g}: discarded"] == [rf"^group{g}/block\d+/discarded$"]
        assert charts[f"group {g}: response_max"] == [rf"^group{g}/block\d+/response_max$"]


def test_tags_group_into_few_sections(run):
    _, _, train, val = run
    scalars = [t for t in train.Tags()["tensors"] + val.Tags()["tensors"] if "kernel" not in t]
    sections = {t.split("/")[0] for t in scalars if "/" in t}
    assert sections == {"discarding", "schedule", "metrics", "steps", "group0", "group1", "group2"}
    assert {t for t in scalars if "/" not in t} == {
        D.CONFIG_TAG,
        D.STRIP_TAG,
        "custom_scalars__config__",
    }


def test_train_and_validation_errors_share_a_tag_in_two_runs(run):
    _, rows, train, val = run
    train_err = [(s, float(v)) for s, v in _values(train, "metrics/error")]
    val_err = [(s, float(v)) for s, v in _values(val, "metrics/error")]
    assert train_err == [(r["epoch"], pytest.approx(r["train_error"])) for r in rows]
    assert val_err == [(r["epoch"], pytest.approx(r["val_error"])) for r in rows]
    assert set(val.Tags()["tensors"]) == {
        "metrics/error",
        "metrics/side_error",
        "metrics/loss",
        "metrics/xent",
    }


def test_per_step_scalars_come_at_the_interval(run):
    _, rows, train, _ = run
    for tag in D.STEP_TAGS:
        assert [s for s, _ in _values(train, tag)] == [3, 6, 9, 12, 15], tag
    lrs = [float(v) for _, v in _values(train, "steps/lr")]
    assert lrs == pytest.approx([LR] * 3 + [RESET_LR] * 2)  # steps 11-15: epoch 3
    assert all(0.0 <= float(v) <= 1.0 for _, v in _values(train, "steps/error"))
    counts = [float(v) for s, v in _values(train, "steps/discarded_count")]
    assert counts[0] == 0.0 and counts[-1] == pytest.approx(rows[-1]["discarded_count"])
    # per epoch, x = finished epochs
    assert [s for s, _ in _values(train, "discarding/count")] == [1, 2, 3]


def test_lr_reset_is_charted_at_the_epoch_the_reset_lr_is_used(run):
    _, rows, train, _ = run
    assert [r["lr"] for r in rows] == pytest.approx([LR, LR, RESET_LR])
    marks = [(s, float(v)) for s, v in _values(train, D.LR_RESET_TAG)]
    assert marks == [(1, 0.0), (2, 0.0), (3, pytest.approx(RESET_LR))]


def _strip_at(acc, epoch):
    import tensorflow as tf

    encoded = dict(_values(acc, D.STRIP_TAG))[epoch]
    width, height = int(encoded[0]), int(encoded[1])  # TensorBoard's image summary layout
    image = tf.io.decode_png(encoded[2]).numpy()
    assert image.shape == (height, width, 3)
    return image


def test_the_strip_is_readable_and_not_blank_when_nothing_is_discarded(run):
    _, rows, train, _ = run
    assert all(b["discarded"] == 0.0 for b in rows[0]["blocks"].values())
    first, last = _strip_at(train, 1), _strip_at(train, EPOCHS)
    assert first.shape == last.shape == D.strip_image(rows).shape
    assert first.shape[1] >= 400 and first.shape[0] >= 200

    def share(image, colour, tol):
        return np.all(np.abs(image.astype(int) - colour) <= tol, axis=-1).mean()

    assert share(first, KEPT, 8) > 0.05, "kept blocks must show in colour, not white on white"
    assert share(last, 0, 20) > share(first, 0, 20) + 0.05  # epochs 2-3: every block black


def test_the_config_is_there_as_text(run):
    cfg, _, train, _ = run
    (step, text), *_ = _values(train, D.CONFIG_TAG)
    markdown = text.item().decode()
    head, sep, block = markdown.partition("\n\n")
    assert step == 0 and sep and block.startswith("```json\n") and block.endswith("\n```")
    assert json.loads(block[len("```json\n") : -len("\n```")]) == cfg
    # the towers in words: one device, the batch in gate groups where the config has them
    group = cfg["gate_group"] or cfg["batch_size"]
    assert head.startswith(f"towers: {cfg['batch_size'] // group} × {group} images per step")


def test_the_config_text_names_the_authors_towers():
    from epsresnet_tf import recipes

    _, cfg = recipes.resolve("imagenet-eps-152-e1.8", gpus=8)  # imagenetEpsilonResnet.py:319
    assert D.config_markdown(cfg).startswith("towers: 8 × 32 images per step over 8 device(s)")


# --- the pieces, without training ---------------------------------------------------------


def _rows(discarded):
    """History rows of 2 groups x 2 blocks over len(discarded) epochs; `discarded[e]` is
    the set of blocks whose EMA of 1 - T is 1 after epoch e + 1."""
    ids = [f"group{g}/block{b}" for g in range(2) for b in range(2)]
    return [
        {"epoch": e + 1, "blocks": {b: {"discarded": float(b in gone)} for b in ids}}
        for e, gone in enumerate(discarded)
    ]


def test_strip_draws_discarded_blocks_black_and_kept_ones_in_colour():
    none = D.strip_image(_rows([set()] * 4))
    some = D.strip_image(_rows([set(), {"group1/block0"}, {"group1/block0"}, {"group1/block0"}]))
    assert none.shape == some.shape and none.shape[1] == 800

    def black(img):
        return np.all(img < 20, axis=-1).mean()

    def kept(img):
        return np.all(np.abs(img.astype(int) - KEPT) <= 8, axis=-1).mean()

    assert black(some) > black(none) + 0.02  # 3 of 16 cells turned black
    assert kept(none) > kept(some) > 0.05


def test_strip_grid_orders_blocks_by_network_and_epochs_by_row():
    rows = _rows([set(), {"group1/block1"}])
    ids, epochs, grid = D.strip_grid(rows)
    assert ids == ["group0/block0", "group0/block1", "group1/block0", "group1/block1"]
    assert epochs == [1, 2]
    assert grid.tolist() == [[0, 0], [0, 0], [0, 0], [0, 1]]


def test_lr_reset_marks_the_epoch_after_the_reset_decision():
    # a reset decided after 3 finished epochs sets the lr of epoch 4
    rows = [{"epoch": e, "lr": lr} for e, lr in [(3, 0.01), (4, 0.1), (5, 0.1)]]
    marks = [D.epoch_scalars(r, lr_resets=[3])["train"][D.LR_RESET_TAG] for r in rows]
    assert marks == [0.0, 0.1, 0.0]


def test_layout_without_steps_or_validation_leaves_their_charts_out():
    rows = _rows([set()])
    written = D.epoch_scalars({**rows[0], "discarded_count": 0.0, "train_error": 0.5})
    layout = D.dashboard_layout(written, with_steps=False)
    regexes = [r for c in layout.category for chart in c.chart for r in chart.multiline.tag]
    assert "^metrics/error$" in regexes and not any("steps/" in r for r in regexes)
    assert "^metrics/loss$" not in regexes and "^schedule/epsilon$" not in regexes


def test_summary_every_steps_must_be_a_count():
    assert tiny()["summary_every_steps"] == 50
    with pytest.raises(UserError, match="^summary_every_steps must be an integer >= 0"):
        tiny(summary_every_steps=-1)


def test_a_resumed_run_goes_on_counting_steps_and_epochs(tmp_path):
    import keras

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    cfg = tiny(epochs=2, summary_every_steps=EVERY)
    sources = (Synthetic(num_batches=STEPS), None)
    first = [StopAfterFirstEpoch()]
    run_training(cfg, tmp_path / "r", sources=sources, verbose=0, extra_callbacks=first)
    run_training(cfg, tmp_path / "r", sources=sources, verbose=0)  # resumes after epoch 1
    train = _accumulator(RunFolder(tmp_path / "r").tb_train)
    assert [s for s, _ in _values(train, "steps/lr")] == [3, 6, 9]
    assert [s for s, _ in _values(train, "discarding/count")] == [1, 2]
    assert [s for s, _ in _values(train, D.CONFIG_TAG)] == [0, 1]  # each start, at its epoch
