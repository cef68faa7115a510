"""The adaptive lr reset on real training runs (docs/semantics.md §7): the
statistic is ONE float32 moving average of the per-step discarded count, and one more
discarded block resets the lr to the adaptive schedule's first value."""

import keras
import numpy as np
import pytest
from _reference import tensorpack_ema

from epsresnet_tf.config import resolve_config
from epsresnet_tf.layers import gate_layers
from epsresnet_tf.models import build_model
from epsresnet_tf.train.loop import run_training
from epsresnet_tf.train.schedules import AdaptiveResetSchedule

STEPS = 60  # enough steps for the average to rise by more than 1 - tolerance
SEED = 3
STANDARD = [[0, 0.0], [2, 0.001]]  # lr 0: weights (and so every block's |F|) stay put
ADAPTIVE = [[0, 0.5], [10, 0.05]]


class FixedBatch:
    """The same batch every step: with lr 0 each block's max |F| is the same every step."""

    image_shape, num_classes, num_batches = (8, 8, 3), 10, STEPS

    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
        self.y = rng.integers(0, 10, 4).astype(np.int32)

    def batches(self, epoch):
        for _ in range(self.num_batches):
            yield self.x, self.y

    def normalise_np(self, x):
        return x


def config(**kw):
    base = {
        "arch": "cifar-basic-8",
        "epochs": 3,
        "batch_size": 4,
        "val_steps": 0,
        "histogram_every": 0,
        "seed": SEED,
        "side_head": False,
        "lr_schedule": STANDARD,
        "adaptive_schedule": ADAPTIVE,
    }
    base.update(kw)
    return resolve_config(base)


def block_peaks(cfg, source):
    """Each block's max |F| on the fixed batch in training mode, for the weights the run
    starts from (run_training seeds Keras with cfg["seed"] before building the net)."""
    keras.utils.set_random_seed(cfg["seed"])
    net = build_model(
        cfg["arch"],
        classes=source.num_classes,
        input_shape=source.image_shape,
        gate="eps",
        side_head=cfg["side_head"],
        weight_decay=cfg["weight_decay"],
        epsilon=0.0,
    )
    gates = gate_layers(net)
    probe = keras.Model(net.inputs, [g.input for g in gates])
    return [float(np.max(np.abs(f))) for f in probe([source.x], training=True)]


@pytest.fixture(scope="module")
def one_block_epsilon():
    source = FixedBatch()
    peaks = sorted(block_peaks(config(), source))
    assert peaks[0] < peaks[1], peaks
    return (peaks[0] + peaks[1]) / 2  # between the smallest block and the others


def test_one_more_discarded_block_resets_the_lr(tmp_path, one_block_epsilon):
    # ε = 0 in epoch 1 (nothing discarded), then ε between the smallest block's max |F| and
    # the others': exactly one block is discarded from epoch 2's first step on.
    cfg = config(epsilon=one_block_epsilon, epsilon_start_epoch=1)
    rows = run_training(cfg, tmp_path / "reset", sources=(FixedBatch(), None), verbose=0)["history"]
    closed = [[b for b, v in r["blocks"].items() if v["gate"] == 0.0] for r in rows]
    assert closed[0] == [] and len(closed[1]) == 1, closed
    assert rows[0]["discarded_count"] == 0.0
    assert 1 - cfg["reset_tolerance"] <= rows[1]["discarded_count"] < 1.0
    # reset after epoch 2: epoch 3 runs at the adaptive schedule's first value, where the
    # standard schedule would have set 0.001
    assert rows[0]["lr"] == 0.0 and rows[1]["lr"] == 0.0
    assert rows[2]["lr"] == pytest.approx(ADAPTIVE[0][1])


def test_authors_exact_comparison_misses_that_block(tmp_path, one_block_epsilon):
    # The same run with tolerance 0 (the authors' float comparison): the average of the
    # count stays below 1 and the lr follows the standard schedule.
    cfg = config(epsilon=one_block_epsilon, epsilon_start_epoch=1, reset_tolerance=0.0)
    rows = run_training(cfg, tmp_path / "exact", sources=(FixedBatch(), None), verbose=0)["history"]
    assert rows[1]["discarded_count"] < 1.0
    assert rows[2]["lr"] == pytest.approx(STANDARD[1][1])


def test_no_rise_in_the_count_no_reset(tmp_path, one_block_epsilon):
    # The block is discarded from the first step: the count is flat from epoch 1 to 2, and
    # a block discarded in epoch 1 has no earlier value to rise from (two values needed).
    cfg = config(epsilon=one_block_epsilon)
    rows = run_training(cfg, tmp_path / "flat", sources=(FixedBatch(), None), verbose=0)["history"]
    assert rows[0]["discarded_count"] > 0.99
    assert abs(rows[1]["discarded_count"] - rows[0]["discarded_count"]) < 0.01
    assert [r["lr"] for r in rows] == [0.0, 0.0, pytest.approx(STANDARD[1][1])]


class GateRecorder(keras.callbacks.Callback):
    """Each training step's gate values (1 - T per block) as the layers hold them."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([1.0 - float(g.gate_value.numpy()) for g in gate_layers(self.model.net)])


def test_count_is_one_float32_moving_average_of_the_integer_count(tmp_path):
    # A real subset-free run whose gates open and close from step to step (ε near the
    # blocks' responses, lr > 0): the history's count equals an independent float32
    # re-computation of one tensorpack moving average of the per-step integer count.
    class Noisy(FixedBatch):
        def batches(self, epoch):
            rng = np.random.default_rng(epoch)
            for _ in range(self.num_batches):
                yield (self.x * rng.uniform(0.2, 3.0)).astype(np.float32), self.y

    peaks = sorted(block_peaks(config(), FixedBatch()))
    cfg = config(epochs=2, epsilon=peaks[1], lr_schedule=[[0, 0.01]], adaptive_schedule=None)
    recorder = GateRecorder()
    rows = run_training(
        cfg, tmp_path / "noisy", sources=(Noisy(), None), verbose=0, extra_callbacks=[recorder]
    )["history"]
    counts = [sum(step) for step in recorder.steps]
    assert len(counts) == 2 * STEPS
    assert all(float(c).is_integer() for c in counts)
    assert len(set(counts)) > 1, "the gates never changed: the test would prove nothing"
    ema = tensorpack_ema(counts)
    assert rows[0]["discarded_count"] == pytest.approx(float(ema[STEPS - 1]), rel=1e-6, abs=1e-7)
    assert rows[1]["discarded_count"] == pytest.approx(float(ema[-1]), rel=1e-6, abs=1e-7)
    # the per-block averages (dashboards, compression) sum to it up to float32 rounding
    assert rows[1]["blocks_discarded_sum"] == pytest.approx(rows[1]["discarded_count"], abs=1e-5)


def authors_lr_to_set(epoch_num, hist, state, threshold=1, last_k=1):
    """LearningRateSetter._get_value_to_set (scripts/LearningRateSetter.py:57-84), restated
    here from the authors' file, not from this package: the lr to set after `epoch_num`
    finished epochs, or None. `hist` is the statistic's history as tensorpack's monitors hold
    it (float32 summary values read as Python floats); `state` holds the callback's
    `schedule`, `updated_schedule` and `last_changed_epoch` (:50-55, the last starting at 0)."""
    schedule = state["schedule"]
    if len(hist) < last_k + 1 or epoch_num - state["last_changed_epoch"] < last_k:  # :61-62
        return next((v for e, v in schedule if e == epoch_num), None)  # :63-67
    hist = hist[-last_k - 1 :]  # :68
    hist_first, hist_max = hist[0], max(hist)  # :72-73
    if hist_max < hist_first + threshold:  # :74, "not increase enough"
        return next((v for e, v in schedule if e == epoch_num), None)  # :75-79
    state["last_changed_epoch"] = epoch_num  # :81
    state["schedule"] = [(a + epoch_num, b) for a, b in state["updated_schedule"]]  # :82-83
    return state["schedule"][0][1]  # :84


def authors_state(standard, adaptive):
    return {"schedule": list(standard), "updated_schedule": list(adaptive), "last_changed_epoch": 0}


def epoch_ends(counts, steps):
    """The float32 moving average of the per-step counts (tests/_reference.py) at the end
    of each epoch of `steps` steps, as the history holds it."""
    ema = tensorpack_ema(counts)
    return [float(ema[i]) for i in range(steps - 1, len(counts), steps)]


def test_float32_stall_needs_the_tolerance():
    # 3,000 steps at each count 0, 1, …, 5 (an epoch each): the one float32 average of the
    # count stalls just below each integer, so the authors' `hist_max < hist_first + 1`
    # (LearningRateSetter.py:74) fires or not by rounding: of the five one-block rises it
    # fires on 3 → 4 alone (docs/semantics.md §7's table).
    steps = 3000
    history = epoch_ends([c for c in range(6) for _ in range(steps)], steps)
    assert history[0] == 0.0 and all(c - 1e-5 < v < c for c, v in enumerate(history[1:], 1))
    standard, adaptive = [(0, 0.1), (2, 0.01)], [(0, 0.5), (3, 0.05)]
    authors = authors_state(standard, adaptive)
    exact = AdaptiveResetSchedule(standard, adaptive, threshold=1.0, tolerance=0.0)
    ours = AdaptiveResetSchedule(standard, adaptive, threshold=1.0, tolerance=0.01)
    theirs, mine = [], []
    for e in range(1, len(history) + 1):  # e finished epochs: the history holds e values
        seen = history[:e]
        expected = authors_lr_to_set(e, seen, authors)
        assert exact.lr_for_epoch(e, seen) == expected, (e, seen)  # tolerance 0 is theirs
        theirs.append(expected == 0.5)
        mine.append(ours.lr_for_epoch(e, seen) == 0.5)
    # the decision after epoch e reads the rise (e − 2) → (e − 1): 0→1 after epoch 2 … 4→5
    # after epoch 6; after epoch 1 there is one value and no decision (LearningRateSetter.py:61)
    assert theirs == [False, False, False, False, True, False]
    # ours: every one-block rise resets (the paper, §4: "every time we lose a residual block,
    # we reset the learning rate")
    assert mine == [False, True, True, True, True, True]


def test_a_late_block_resets_neither_rule():
    # A block discarded in an epoch's last 50 steps: the average rises by 1 − 0.95^50 ≈ 0.92
    # in that epoch, short of 1 (theirs) and of 1 − 0.01 (ours); the rest comes in the next.
    steps = 350
    history = epoch_ends([0] * steps + [0] * 300 + [1] * 50 + [1] * steps, steps)
    assert 0.9 < history[1] < 0.99 and history[2] - history[1] < 0.99
    standard, adaptive = [(0, 0.1), (2, 0.01)], [(0, 0.5)]
    authors = authors_state(standard, adaptive)
    exact = AdaptiveResetSchedule(standard, adaptive, threshold=1.0, tolerance=0.0)
    ours = AdaptiveResetSchedule(standard, adaptive, threshold=1.0, tolerance=0.01)
    got = []
    for e in (2, 3):  # the rise into epoch 2's end, then into epoch 3's
        expected = authors_lr_to_set(e, history[:e], authors)
        assert exact.lr_for_epoch(e, history[:e]) == expected
        assert ours.lr_for_epoch(e, history[:e]) == expected
        got.append(expected)
    assert got == [0.01, None]  # the standard schedule's entry at 2, then nothing: no reset


def test_two_blocks_at_once_reset_both_rules():
    # Two more blocks in one epoch rise the average by ~2: the authors' rule resets without
    # any tolerance, and ours agrees with it on every decision.
    steps = 3000
    history = epoch_ends([1] * steps + [3] * steps + [3] * steps, steps)
    standard, adaptive = [(0, 0.1), (2, 0.01)], [(0, 0.5), (1, 0.05)]
    authors = authors_state(standard, adaptive)
    exact = AdaptiveResetSchedule(standard, adaptive, threshold=1.0, tolerance=0.0)
    got = []
    for e in (1, 2):
        expected = authors_lr_to_set(e, history[:e], authors)
        assert exact.lr_for_epoch(e, history[:e]) == expected
        got.append(expected)
    # after epoch 1: one value (follow the schedule: no entry at 1); after epoch 2: reset
    assert got == [None, 0.5]
    assert authors["schedule"] == [(2, 0.5), (3, 0.05)] == list(exact.current.points)


def test_the_reset_reads_the_statistic_the_config_names(tmp_path, one_block_epsilon):
    # The same one-block run, with the reset reading the discarded ratio (count / 3 blocks):
    # it rises by a third, below the threshold 1, so the lr follows the standard schedule.
    cfg = config(
        epsilon=one_block_epsilon, epsilon_start_epoch=1, reset_statistic="discarded_ratio"
    )
    rows = run_training(cfg, tmp_path / "ratio", sources=(FixedBatch(), None), verbose=0)["history"]
    assert rows[1]["discarded_ratio"] == pytest.approx(rows[1]["discarded_count"] / 3)
    assert rows[2]["lr"] == pytest.approx(STANDARD[1][1])
