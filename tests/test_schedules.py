"""Schedules (docs/semantics.md §7) driven by synthetic histories, and a port of tensorpack's
`callbacks/param_test.py` against our setter."""

import json
import logging

import pytest

from epsresnet_tf.errors import UserError
from epsresnet_tf.train.schedules import (
    AdaptiveResetSchedule,
    FixedSchedule,
    PiecewiseSchedule,
    ScheduledSetter,
    epsilon_schedule,
    weight_decay_factor,
)

STANDARD = [(0, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)]
ADAPTIVE = [(0, 0.1), (41, 0.01), (61, 0.001), (150, 0.0002)]


def drive(schedule, counts):
    """Call lr_for_epoch at every epoch boundary like the callback does: at e finished
    epochs, with the e recorded counts. Returns {e: lr set}."""
    out = {}
    for e in range(len(counts) + 1):
        v = schedule.lr_for_epoch(e, counts[:e])
        if v is not None:
            out[e] = v
    return out


# --- piecewise semantics (docs/semantics.md §7 last bullet) -----------------------------------------


def test_piecewise_exact_and_in_effect():
    s = PiecewiseSchedule(STANDARD)
    assert s.value_at(0) == 0.1 and s.value_at(82) == 0.01 and s.value_at(83) is None
    assert s.value_in_effect(81) == 0.1 and s.value_in_effect(82) == 0.01
    assert s.value_in_effect(1000) == 0.0002
    assert PiecewiseSchedule([(1, 0.1)]).value_in_effect(0) is None


@pytest.mark.parametrize("bad", [[], [(5, 0.1), (3, 0.2)], [(2, 0.1), (2, 0.2)], [(-1, 0.1)]])
def test_piecewise_rejects_bad(bad):
    with pytest.raises(UserError):
        PiecewiseSchedule(bad)


# --- the adaptive reset ----------------------------------------------------------------


def test_no_reset_follows_standard():
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    counts = [0.0] * 130
    assert drive(s, counts) == {0: 0.1, 82: 0.01, 123: 0.001}
    assert s.last_reset is None


def test_no_reset_when_count_stays_or_falls():
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    # rising by less than the threshold, staying, falling: never a reset
    counts = [0, 0.5, 0.9, 0.9, 0.4, 0.2, 1.1, 1.1, 0.3] + [0.3] * 80
    assert drive(s, counts) == {0: 0.1, 82: 0.01}
    assert s.resets == []


def test_one_reset():
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    counts = [0.0] * 10 + [1.0] * 80  # the count rises by 1 during epoch 11
    got = drive(s, counts)
    # at e=11 the history ends ..., 0 (epoch 10), 1 (epoch 11): reset, adaptive shifted by 11
    assert got[11] == 0.1 and s.last_reset == 11
    assert got == {0: 0.1, 11: 0.1, 11 + 41: 0.01, 11 + 61: 0.001}
    assert 82 not in got  # the standard schedule no longer applies
    assert s.current == PiecewiseSchedule(ADAPTIVE).shifted(11)


def test_repeated_resets_each_shift_the_schedule():
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    counts = [0.0] * 5 + [1.0] * 45 + [2.5] * 100  # rises at epochs 6 and 51
    got = drive(s, counts)
    assert s.resets == [6, 51]
    expected = {0: 0.1, 6: 0.1, 6 + 41: 0.01, 51: 0.1, 51 + 41: 0.01, 51 + 61: 0.001}
    assert got == expected
    # the first reset's later entries (6+61=67) were overridden by the second reset
    assert 67 not in got


def test_window_rule():
    # k = 2: compare the last three values against the first of them
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE, threshold=1, window=2)
    assert s.lr_for_epoch(1, [0.0]) is None  # fewer than k+1 values
    assert s.lr_for_epoch(2, [0.0, 0.6]) is None  # still fewer than 3
    assert s.lr_for_epoch(3, [0.0, 0.6, 0.9]) is None  # 0.9 < 0 + 1
    assert s.lr_for_epoch(4, [0.0, 0.6, 0.9, 1.2]) is None  # [.6,.9,1.2]: 1.2 < 1.6
    assert s.resets == []
    assert s.lr_for_epoch(5, [0.0, 0.6, 0.9, 1.2, 2.0]) == 0.1  # [.9,1.2,2]: 2 >= 1.9
    assert s.resets == [5]
    # with k = 1 the same history resets nowhere: no neighbour rises by 1
    s1 = AdaptiveResetSchedule(STANDARD, ADAPTIVE, threshold=1, window=1)
    drive(s1, [0.0, 0.6, 0.9, 1.2, 2.0])
    assert s1.resets == []


def test_window_rule_independent():
    def naive(counts, k, thr):
        """The reset epochs of the authors' LearningRateSetter._get_value_to_set, restated
        from scripts/LearningRateSetter.py (not from this package): called with epoch_num =
        finished epochs and the history of those epochs."""
        resets, last_changed_epoch = [], 0  # :50
        for epoch_num in range(len(counts) + 1):
            hist = counts[:epoch_num]
            if len(hist) < k + 1 or epoch_num - last_changed_epoch < k:  # :61-62
                continue
            hist = hist[-k - 1 :]  # :68
            if max(hist) < hist[0] + thr:  # :72-74, "not increase enough"
                continue
            last_changed_epoch = epoch_num  # :81
            resets.append(epoch_num)
        return resets

    counts = [0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4, 2.4, 2.4, 3.5, 3.5, 3.5]
    for k in (1, 2, 3):
        s = AdaptiveResetSchedule(STANDARD, ADAPTIVE, window=k)
        drive(s, counts)
        assert s.resets == naive(counts, k, 1.0), k
    # slow rise: k=1 never sees a rise of 1 between neighbours, k=4 sees 1.2 over 4 epochs
    s1 = AdaptiveResetSchedule(STANDARD, ADAPTIVE, window=1)
    drive(s1, counts[:9])
    assert s1.resets == []
    s4 = AdaptiveResetSchedule(STANDARD, ADAPTIVE, window=4)
    drive(s4, counts[:9])
    assert s4.resets and s4.resets[0] == 5  # window [0, .3, .6, .9, 1.2]


def test_no_check_within_window_after_reset():
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE, window=3)
    counts = [0, 0, 0, 5, 10, 15, 20, 20, 20, 20, 20]
    drive(s, counts)
    # reset at 4 ([0,0,0,5]); epochs 5, 6 are too soon; at 7 window [5,10,15,20] rises again
    assert s.resets[:2] == [4, 7]


def test_state_round_trip():
    s = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    counts = [0.0] * 5 + [1.0] * 30 + [2.0] * 30
    first = drive(s, counts[:20])
    state = json.loads(json.dumps(s.get_state()))  # must survive JSON (the checkpoint)
    resumed = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    resumed.set_state(state)
    whole = AdaptiveResetSchedule(STANDARD, ADAPTIVE)
    full = drive(whole, counts)
    rest = {e: resumed.lr_for_epoch(e, counts[:e]) for e in range(21, len(counts) + 1)}
    rest = {e: v for e, v in rest.items() if v is not None}
    assert {**{e: v for e, v in first.items()}, **rest} == full
    assert resumed.get_state() == whole.get_state()
    assert resumed.resets == [6, 36]


def test_epsilon_schedules():
    const = epsilon_schedule(2.5)
    assert const.value_in_effect(0) == 2.5
    warm = epsilon_schedule(2.5, start_epoch=150)
    assert warm.value_in_effect(0) == 0.0 and warm.value_in_effect(149) == 0.0
    assert warm.value_in_effect(150) == 2.5 and warm.value_at(150) == 2.5
    with pytest.raises(UserError):
        epsilon_schedule(-1.0)


def test_weight_decay_factor_staircase():
    assert weight_decay_factor(0) == 1.0
    assert weight_decay_factor(479_999) == 1.0
    assert weight_decay_factor(480_000) == pytest.approx(0.2)
    assert weight_decay_factor(960_001) == pytest.approx(0.04)
    assert weight_decay_factor(10**6, every=0) == 1.0


# --- port of tensorpack/callbacks/param_test.py ------------------------------------------


def simulate(setter, steps_per_epoch, max_epoch, starting_epoch=1, initial=1.0):
    """tensorpack's trainer loop around a setter, with its `ParamObject` that records
    {global_step: value} each time the value is set. tensorpack epochs are 1-based and
    `starting_epoch` is the first to run, so starting_epoch-1 epochs have finished."""
    history, value, step = {}, initial, 0
    v = setter.begin(starting_epoch - 1, value)
    if v is not None:
        history[step], value = v, v
    for e in range(starting_epoch - 1, max_epoch):  # before each epoch: e finished
        v = setter.epoch(e)
        if v is not None:
            history[step], value = v, v
        step += steps_per_epoch
    v = setter.epoch(max_epoch)  # tensorpack also triggers after the last epoch
    if v is not None:
        history[step] = v
    return history


def test_tp_schedule():
    setter = ScheduledSetter(FixedSchedule([(10, 0.3), (20, 0.4), (30, 0.5)]))
    history = simulate(setter, 1, 50)
    assert min(history) == 10
    assert len(history) == 3
    assert history == {10: 0.3, 20: 0.4, 30: 0.5}


def test_tp_start_after_schedule():
    setter = ScheduledSetter(
        FixedSchedule([(10, 0.3), (20, 0.4), (30, 0.5)]), set_at_beginning=False
    )
    assert simulate(setter, 1, 92, starting_epoch=90) == {}


def test_tp_start_after_schedule_set_at_beginning():
    setter = ScheduledSetter(
        FixedSchedule([(10, 0.3), (20, 0.4), (30, 0.5)]), set_at_beginning=True
    )
    assert simulate(setter, 1, 92, starting_epoch=90) == {0: 0.5}


def test_tp_warning_start_in_the_middle(caplog):
    setter = ScheduledSetter(FixedSchedule([(10, 0.3), (20, 0.4), (30, 0.5)]))
    with caplog.at_level(logging.WARNING, logger="epsresnet_tf.train.schedules"):
        simulate(setter, 1, 21, starting_epoch=20)
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_tp_no_warning_start_in_the_middle(caplog):
    setter = ScheduledSetter(FixedSchedule([(10, 0.3), (20, 1.0), (30, 1.5)]))
    with caplog.at_level(logging.WARNING, logger="epsresnet_tf.train.schedules"):
        simulate(setter, 1, 22, starting_epoch=21)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
