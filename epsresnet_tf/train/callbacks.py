"""Keras callbacks of the training loop. All work happens at epoch boundaries; the
training step itself carries no Python (monitor values are graph variables).

They share one `RunState` (the per-epoch history and the NaN flag), filled by
`MonitorCallback` first at each epoch end and read by the others, in list order.
"""

import logging
import math

import keras
import numpy as np

from epsresnet_tf.gates import read_hyper, set_hyper
from epsresnet_tf.layers import gate_layers
from epsresnet_tf.train import monitor
from epsresnet_tf.train.schedules import ScheduledSetter

log = logging.getLogger(__name__)

#: logs keys of the training model's metrics → history names (errors, not accuracies)
_ERRORS = {
    "acc": "train_error",
    "top5": "train_top5_error",
    "side_acc": "train_side_error",
    "val_acc": "val_error",
    "val_top5": "val_top5_error",
    "val_side_acc": "val_side_error",
}


class RunState:
    """History rows (one dict per finished epoch) and flags shared by the callbacks.
    `statistic` is the history key the adaptive reset reads (docs/semantics.md §7)."""

    def __init__(self, rows=None, statistic="discarded_count"):
        self.rows = list(rows or [])
        self.statistic = statistic
        self.nan = None  # message once a non-finite loss stopped the run

    @property
    def counts(self):
        return [r[self.statistic] for r in self.rows]


def _assign(var, value):
    var.assign(float(value))


def set_learning_rate(model, value):
    _assign(model.optimizer.learning_rate, value)


def set_gate_hyper(model, name, value):
    """Set a gate hyper-parameter (ε) on every gate of the net whose kind has it."""
    set_hyper(gate_layers(model.net), name, value)


def gate_hyper(model, name):
    """A gate hyper-parameter's current value; None where no gate has it."""
    return read_hyper(gate_layers(model.net), name)


class ScheduleCallback(keras.callbacks.Callback):
    """Sets a parameter from a schedule before each epoch (tensorpack semantics): `setter`
    is a ScheduledSetter; `apply(model, value)` writes it; `read(model)` reads it. The
    adaptive schedule sees the discarded counts of the finished epochs."""

    def __init__(self, setter: ScheduledSetter, apply, read, state: RunState):
        super().__init__()
        self.setter, self.apply, self.read, self.state = setter, apply, read, state

    def on_train_begin(self, logs=None):
        start = len(self.state.rows)
        v = self.setter.begin(start, self.read(self.model))
        if v is not None:
            self.apply(self.model, v)

    def on_epoch_begin(self, epoch, logs=None):
        v = self.setter.epoch(epoch, self.state.counts[:epoch])
        if v is not None:
            self.apply(self.model, v)


class MonitorCallback(keras.callbacks.Callback):
    """Builds the epoch's history row from the logs and the gates' variables; stops the
    run when the epoch went non-finite: a step's training loss (flagged inside the step,
    `TrainingModel.first_nonfinite_step`), the validation loss, or any variable a checkpoint
    holds. The callbacks after it then write nothing for that epoch, so the last
    checkpoint is the last one whose loss, validation loss and weights were all finite.

    `discarded_count` is the training model's one moving average of the per-step count
    (what the adaptive reset reads, docs/semantics.md §7);
    `discarded_ratio` divides it by the number of gated blocks and
    `discarded_ratio_authors` by the authors' denominator (3n+2 on CIFAR), so their
    Fig. 9 curves can be overlaid."""

    def __init__(self, state: RunState, authors_blocks=None):
        super().__init__()
        self.state = state
        self.authors_blocks = authors_blocks

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        problems = nonfinite_problems(self.model, logs)
        if problems:
            self.state.nan = f"epoch {epoch + 1} went non-finite ({', '.join(problems)})"
            self.model.stop_training = True
            return
        self.state.rows.append(self._row(epoch, logs))

    def _row(self, epoch, logs):
        snap = monitor.gate_snapshot(self.model.net)
        row = {
            "epoch": epoch + 1,
            "lr": float(self.model.optimizer.learning_rate.numpy()),
            **self.model.hyper_values(),  # the gate kind's hyper-parameters (ε)
            "step": int(self.model.optimizer.iterations.numpy()),
        }
        for key, value in sorted(logs.items()):
            name = _ERRORS.get(key)
            if name:
                row[name] = 1.0 - float(value)
            elif key in ("loss", "xent", "val_loss", "val_xent", "wd", "wd_factor"):
                row[key] = float(value)
        n = snap["num_blocks"]
        count = self.model.discarded_count_value()
        authors = self.authors_blocks or n
        row.update(
            discarded_count=count,
            discarded_ratio=count / n if n else 0.0,
            discarded_ratio_authors=count / authors if authors else 0.0,
            blocks_discarded_sum=snap["blocks_discarded_sum"],
            blocks=snap["blocks"],
        )
        return row


def nonfinite_problems(model, logs) -> list[str]:
    """What of the finished epoch is NaN/Inf, in words ([] when all is finite): the first
    step whose training loss was, the epoch's losses, and the variables that hold any."""
    problems = []
    step = model.first_nonfinite_step_value()
    if step is not None:
        problems.append(f"training loss at step {step}")
    for key in ("loss", "val_loss"):
        value = float(logs.get(key, 0.0))
        if not math.isfinite(value) and not (key == "loss" and step is not None):
            problems.append(f"{key} {value}")
    bad = model.nonfinite_variables()
    if bad:
        problems.append(f"weights: {len(bad)} variables, e.g. {bad[0]}")
    return problems


class HistoryCallback(keras.callbacks.Callback):
    """Adds each epoch's row to history.jsonl through `append(rows)` (the run folder's
    `append_history`: all or nothing; a full disk is one line), on `writer`'s thread
    (train/writer.py; default: at once). The file holds the rows of `state` when training
    begins (a resume rewrites it from its checkpoint); rows are never changed once
    appended, so each is written once."""

    def __init__(self, append, state: RunState, writer=None):
        from epsresnet_tf.train.writer import EpochWriter

        super().__init__()
        self.append, self.state = append, state
        self.writer = writer or EpochWriter(threaded=False)
        self.written = len(state.rows)

    def on_train_begin(self, logs=None):
        self.written = len(self.state.rows)

    def on_epoch_end(self, epoch, logs=None):
        if self.state.nan or len(self.state.rows) <= self.written:
            return
        self.writer.submit("history", self.append, self.state.rows[self.written :])
        self.written = len(self.state.rows)


class CheckpointCallback(keras.callbacks.Callback):
    """After each good epoch, `save(epoch + 1)` writes an atomic checkpoint (the loop's
    save copies the variables, then hands the file write to its writer thread)."""

    def __init__(self, save, state: RunState):
        super().__init__()
        self.save, self.state = save, state

    def on_epoch_end(self, epoch, logs=None):
        if not self.state.nan:
            self.save(epoch + 1)


class StopCallback(keras.callbacks.Callback):
    """Ends `fit` at the first step boundary after SIGINT/SIGTERM (`stopping.StopRequest`),
    and keeps the request's epoch and step up to date for the one-line message. Last in the
    list: a signal that arrives during an epoch's end lets that epoch's checkpoint finish."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def on_epoch_begin(self, epoch, logs=None):
        self.request.epoch, self.request.step = epoch + 1, 0
        self.request.check()

    def on_train_batch_end(self, batch, logs=None):
        self.request.step = batch + 1
        self.request.check()

    def on_test_batch_end(self, batch, logs=None):
        self.request.check()  # a long validation is abandoned too (the epoch is not saved)

    def on_epoch_end(self, epoch, logs=None):
        self.request.check()


def finite(x):
    return bool(np.all(np.isfinite(x)))
