"""Hyper-parameter schedules in pure Python (docs/semantics.md §6–§7): no TensorFlow here.

Epoch numbers follow tensorpack's `ScheduledHyperParamSetter`: an entry ``(e, v)`` takes
effect once ``e`` epochs have finished, i.e. for the (e+1)-th epoch; ``(0, v)`` is set
before the first. Values are set exactly at the scheduled epochs and only then; a run that
starts (or resumes) after some entries gets the value in effect at its start.

The Keras callbacks in `epsresnet_tf.train.callbacks` call these objects with Keras'
0-based epoch index, which is the number of finished epochs.
"""

import logging
import math

from epsresnet_tf.errors import UserError


class PiecewiseSchedule:
    """A tensorpack epoch schedule: increasing ``[(epoch, value), ...]``."""

    def __init__(self, points):
        points = [(int(e), float(v)) for e, v in points]
        if not points:
            raise UserError("a schedule needs at least one (epoch, value) entry")
        epochs = [e for e, _ in points]
        if any(e < 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise UserError(f"schedule epochs must be >= 0 and increasing, got {epochs}")
        self.points = points

    def value_at(self, epoch):
        """The value scheduled exactly when `epoch` epochs have finished, else None."""
        for e, v in self.points:
            if e == epoch:
                return v
        return None

    def value_in_effect(self, epoch):
        """The value the schedule has set once `epoch` epochs have finished (None before its
        first entry): what a run starting at `epoch` should use."""
        value = None
        for e, v in self.points:
            if e > epoch:
                break
            value = v
        return value

    def shifted(self, offset):
        return PiecewiseSchedule([(e + offset, v) for e, v in self.points])

    @property
    def first_value(self):
        return self.points[0][1]

    def to_list(self):
        return [[e, v] for e, v in self.points]

    def __eq__(self, other):
        return isinstance(other, PiecewiseSchedule) and self.points == other.points

    def __repr__(self):
        return f"PiecewiseSchedule({self.points})"


def value_at_beginning(schedule, start_epoch, current_value, set_at_beginning=True):
    """tensorpack's check before training: (value to set or None, warning or None).

    `start_epoch` epochs have finished. If the schedule says the parameter should now hold
    another value than `current_value`, warn; set it if `set_at_beginning`.
    """
    expected = schedule.value_in_effect(start_epoch)
    if expected is None or math.isclose(expected, current_value, rel_tol=1e-6, abs_tol=1e-12):
        return None, None
    warning = (
        f"according to the schedule the value should be {expected:.7g} after epoch "
        f"{start_epoch}, but it is {current_value:.7g}"
    )
    return (expected if set_at_beginning else None), warning


log = logging.getLogger(__name__)


class ScheduledSetter:
    """Drives one parameter from a schedule the way tensorpack's setter does; the Keras
    callbacks delegate here, so this is what the ported tensorpack tests exercise.

    `schedule` has `lr_for_epoch(epoch, history)` and `value_in_effect(epoch)`
    (FixedSchedule, AdaptiveResetSchedule).
    """

    def __init__(self, schedule, name="param", set_at_beginning=True):
        self.schedule = schedule
        self.name = name
        self.set_at_beginning = set_at_beginning

    def begin(self, start_epoch, current_value):
        """Before training, `start_epoch` epochs finished: the value to set now, or None."""
        value, warning = value_at_beginning(
            self.schedule.current, start_epoch, current_value, self.set_at_beginning
        )
        if warning:
            log.warning(
                "%s: %s%s",
                self.name,
                warning,
                f"; setting {value:.7g}" if value is not None else "",
            )
        return value

    def epoch(self, epoch, history=()):
        """Before the epoch after `epoch` finished ones: the value to set, or None."""
        return self.schedule.lr_for_epoch(epoch, history)


class AdaptiveResetSchedule:
    """The authors' adaptive learning-rate reset (docs/semantics.md §7), one decision per epoch.

    `lr_for_epoch(e, history)` is called when `e` epochs have finished (before the next
    one), with `history` the discarded-block counts of those `e` epochs; it returns the lr
    to set or None. Rule, with k = `window`:

    1. fewer than k+1 values, or fewer than k epochs since the last reset: follow the
       current schedule;
    2. else if max(last k+1 values) >= first of them + `threshold` − `tolerance`: reset —
       the current schedule becomes `adaptive` shifted by e, its first value is returned,
       and e is remembered as the last reset;
    3. else follow the current schedule.

    The history is one float32 moving average of an integer count: after one more block
    is discarded it approaches the next integer from below and stalls short of it by
    float32 rounding, so the authors' exact comparison (tolerance 0) fires or not by
    rounding. A tolerance well above that rounding makes one more discarded block reset
    the lr whenever it was discarded long enough before the epoch ended for the average
    to rise by 1 − tolerance (docs/semantics.md §7).
    """

    def __init__(self, standard, adaptive, threshold=1.0, window=1, tolerance=0.0):
        self.standard = _as_schedule(standard)
        self.adaptive = _as_schedule(adaptive)
        if window < 1:
            raise UserError(f"reset window must be >= 1, got {window}")
        if not 0 <= tolerance < threshold:
            raise UserError(f"reset tolerance must be in [0, {threshold}), got {tolerance}")
        self.threshold = float(threshold)
        self.tolerance = float(tolerance)
        self.window = int(window)
        self.current = self.standard
        self.last_reset = None
        self.resets = []

    def lr_for_epoch(self, epoch, history):
        k = self.window
        history = list(history)
        too_soon = self.last_reset is not None and epoch - self.last_reset < k
        if len(history) < k + 1 or too_soon:
            return self.current.value_at(epoch)
        recent = history[-(k + 1) :]
        if max(recent) >= recent[0] + self.threshold - self.tolerance:
            self.current = self.adaptive.shifted(epoch)
            self.last_reset = epoch
            self.resets.append(epoch)
            return self.current.first_value
        return self.current.value_at(epoch)

    def reset_at(self, epoch):
        """The schedule a reset switched to when `epoch` epochs had finished, else None: the
        event the console reports, decided by `lr_for_epoch` alone."""
        return self.current if self.last_reset == epoch else None

    def value_in_effect(self, epoch):
        return self.current.value_in_effect(epoch)

    def get_state(self):
        return {
            "current": self.current.to_list(),
            "last_reset": self.last_reset,
            "resets": list(self.resets),
        }

    def set_state(self, state):
        self.current = PiecewiseSchedule(state["current"])
        self.last_reset = state["last_reset"]
        self.resets = list(state.get("resets", []))


class FixedSchedule:
    """A plain schedule with the same interface as AdaptiveResetSchedule (no resets)."""

    def __init__(self, schedule):
        self.current = _as_schedule(schedule)

    def lr_for_epoch(self, epoch, history):
        return self.current.value_at(epoch)

    def reset_at(self, epoch):
        return None

    def value_in_effect(self, epoch):
        return self.current.value_in_effect(epoch)

    def get_state(self):
        return {"current": self.current.to_list()}

    def set_state(self, state):
        self.current = PiecewiseSchedule(state["current"])


def epsilon_schedule(epsilon, start_epoch=0):
    """ε constant from the start, or 0 until `start_epoch` epochs have finished and then ε
    (the authors' last CIFAR script: 150)."""
    if epsilon < 0:
        raise UserError(f"epsilon must be >= 0, got {epsilon}")
    if start_epoch < 0:
        raise UserError(f"epsilon start epoch must be >= 0, got {start_epoch}")
    if start_epoch == 0:
        return PiecewiseSchedule([(0, epsilon)])
    return PiecewiseSchedule([(0, 0.0), (start_epoch, epsilon)])


def weight_decay_factor(step, every=480_000, factor=0.2):
    """The CIFAR script's staircase on the decay coefficient: factor ** floor(step / every).
    (The loop evaluates the same formula inside the graph from the optimizer's step.)"""
    if not every:
        return 1.0
    return factor ** (step // every)


def _as_schedule(s):
    return s if isinstance(s, PiecewiseSchedule) else PiecewiseSchedule(s)
