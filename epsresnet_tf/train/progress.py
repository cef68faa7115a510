"""What `epsresnet train` prints while it trains, in one vocabulary: the paper's error
(history keys `train_error`, `val_error`), never an accuracy.

- one start line naming the run folder (and the epoch a resumed run continues after);
- at verbose 1 on a terminal, a per-step bar (keras.utils.Progbar): train error, loss,
  lr and ε of the epoch; the epoch's line takes its place when the epoch ends;
- one line per finished epoch: train error and loss, val error, discarded count and
  ratio of the gated blocks (docs/semantics.md §8), lr, ε, time;
- events: a block discarded or restored (its EMA of is_discarded crossing
  `DISCARDED_ABOVE`), and the adaptive reset of the lr schedule (docs/semantics.md §7),
  which the lr schedule itself reports (`reset_at`). At verbose 1 each event is a line of
  its own, indented under its epoch's line; at verbose 2 (`--quiet`) they end that line, so
  every epoch is exactly one line.

Everything goes to stdout as plain text, except the bar's own escape codes on a terminal.
"""

import shutil
import sys
import time

import keras

#: a block whose EMA of is_discarded is above this counts as discarded (summary, events)
DISCARDED_ABOVE = 0.5


def shows_bar(verbose: int) -> bool:
    """The per-step bar is drawn at verbose 1 on a terminal only: Progbar writes escape
    codes and backspaces whatever stdout is, which a log file should not get."""
    return verbose == 1 and sys.stdout.isatty()


def start_line(run_dir, start: int, epochs: int) -> str:
    """The first line of a run: its folder, and where a resumed run continues."""
    if not start:
        return f"training {run_dir}: {epochs} epochs"
    if start >= epochs:
        return f"resuming {run_dir} after epoch {start}: all {epochs} epochs are done"
    return f"resuming {run_dir} after epoch {start} of {epochs}"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def measures(row: dict) -> list[str]:
    """A history row's errors and discarded count, in words (the epoch line, the summary)."""
    words = {
        "train_error": "train error",
        "val_error": "val error",
        "val_top5_error": "val top-5 error",
    }
    parts = [f"{text} {percent(row[key])}" for key, text in words.items() if key in row]
    blocks = len(row.get("blocks", {}))
    if blocks:
        parts.append(
            f"discarded {row['discarded_count']:.2f} of {blocks} ({row['discarded_ratio']:.1%})"
        )
    return parts


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def epoch_line(row: dict, epochs: int, seconds: float, hyper_labels=None) -> str:
    """The one line of a finished epoch; `hyper_labels` ({history key: label}, the model's
    `hyper_labels`): the gate kind's hyper-parameters it shows after the lr."""
    parts = measures(row)
    # the training loss (cross-entropy + weight decay) beside the training error
    loss = [f"loss {row['loss']:.4g}"] if row.get("loss") is not None else []
    parts = parts[:1] + loss + parts[1:] + [f"lr {row['lr']:.4g}"]
    for key, label in (hyper_labels or {}).items():
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.4g}")
    parts.append(duration(seconds))
    return f"epoch {row['epoch']}/{epochs}: " + ", ".join(parts)


def discard_changes(before: dict | None, after: dict) -> list[str]:
    """Event texts for the blocks discarded and restored between two history rows (no
    row before: every block starts kept)."""
    was = {
        b for b, v in (before or {}).get("blocks", {}).items() if v["discarded"] > DISCARDED_ABOVE
    }
    now = {b for b, v in after["blocks"].items() if v["discarded"] > DISCARDED_ABOVE}
    epoch = after["epoch"]
    events = []
    if now - was:
        events.append(f"discarded in epoch {epoch}: " + ", ".join(sorted(now - was)))
    if was - now:
        events.append(f"restored in epoch {epoch}: " + ", ".join(sorted(was - now)))
    return events


def reset_text(finished: int, schedule, statistic: str, value: float, epochs: int) -> str:
    """The adaptive reset decided after `finished` epochs: the new lr schedule, its entries
    in the epochs they take effect for ((e, v) is set once e epochs have finished), up to
    the run's last epoch."""
    points = [(e, v) for e, v in schedule.points if e < epochs] or schedule.points[:1]
    steps = ", ".join(f"lr {v:.4g} from epoch {e + 1}" for e, v in points)
    return f"adaptive reset after epoch {finished} ({statistic} {value:.2f}): {steps}"


class ProgressCallback(keras.callbacks.Callback):
    """The console of a run (see the module's text). After the loop's schedule, monitor
    and checkpoint callbacks: it reads the epoch's history row from `state` (a RunState)
    and the lr schedule's reset after the schedule callback has decided it. `verbose` 1:
    bar (on a terminal) and event lines; 2: one line per epoch. `hyper_labels`: the gate
    kinds' hyper-parameters the lines show and their labels (TrainingModel.hyper_labels)."""

    def __init__(self, state, epochs, steps, lr_schedule, verbose=1, saved=None, hyper_labels=None):
        super().__init__()
        self.state, self.epochs, self.steps = state, epochs, steps
        self.lr_schedule, self.verbose = lr_schedule, verbose
        self.saved = saved  # () -> a future done once the epoch's files are written
        self.hyper_labels = dict(hyper_labels or {})
        self.bar = None
        self.pending = []  # events waiting for the next epoch line (verbose 2)
        self.unsaid = []  # (future, lines): an epoch's lines, said once its files are written
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        reset = self.lr_schedule.reset_at(epoch)
        if reset is not None:
            stat = self.state.statistic
            value = self.state.rows[-1][stat]
            self._event(reset_text(epoch, reset, stat, value, self.epochs))
        self.started = time.monotonic()
        if shows_bar(self.verbose):
            self.bar = StepBar(self.steps, self.hyper_labels)

    def on_train_batch_end(self, batch, logs=None):
        if self.unsaid and self.unsaid[0][0].done():
            self.print_saved()
        if self.bar is not None and self.bar.due(batch + 1):
            self.bar.draw(batch + 1, self.model, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        self._erase_bar()
        rows = self.state.rows
        if self.state.nan or not rows or rows[-1]["epoch"] != epoch + 1:
            return  # a non-finite epoch: the loop says so once training stops
        line = epoch_line(rows[-1], self.epochs, time.monotonic() - self.started, self.hyper_labels)
        events = discard_changes(rows[-2] if len(rows) > 1 else None, rows[-1])
        if self.verbose == 1:
            lines = [line, *("  " + text for text in events)]
        else:
            lines = ["; ".join([line, *self.pending, *events])]
        self.pending = []
        self.unsaid.append((self.saved() if self.saved else None, lines))
        self.print_saved()

    def print_saved(self, wait: bool = False):
        """Say the lines of the epochs whose files are written (all of them with `wait`), in
        order: an epoch's line means its checkpoint is on disk."""
        while self.unsaid:
            future, lines = self.unsaid[0]
            if future is not None and not (wait or future.done()):
                return
            if future is not None and future.exception() is not None:
                self.unsaid.pop(0)  # not saved: the run's writer raises why, not us
                continue
            if self.bar is not None:
                self.bar.erase()  # the bar is drawn again at its next step
            for line in lines:
                _say(line)
            self.unsaid.pop(0)

    def on_train_end(self, logs=None):
        self._erase_bar()
        self.print_saved(wait=True)

    def _event(self, text):
        if self.verbose == 1:  # after the lines of the epoch before it
            self.unsaid.append((None, ["  " + text]))
            self.print_saved()
        else:
            self.pending.append(text)

    def _erase_bar(self):
        if self.bar is not None:
            self.bar.erase()
            self.bar = None


class StepBar:
    """One epoch's per-step line: keras.utils.Progbar with the running train error (in %,
    as the epoch lines), loss, and the epoch's lr and ε. Progbar does not fit its line to
    the terminal, and a wrapped line is redrawn as new rows each step: the bar narrows,
    then ε and lr are left out, until the line fits. `hyper_labels` ({hyper-parameter:
    label}): the gate kind's values it shows after the lr (ε)."""

    NAMES = ("train error %", "loss", "lr")
    VALUE_CHARS = 15  # " - name: " and a value as Progbar prints it ("1.0000e-04")
    INTERVAL_S = 0.1  # redraw at most this often: each redraw reads the step's metrics

    def __init__(self, steps: int, hyper_labels=None):
        columns = shutil.get_terminal_size().columns
        self.steps, self.last_draw = steps, 0.0
        self.hyper = {label: key for key, label in (hyper_labels or {}).items()}
        names = [*self.NAMES, *self.hyper]
        fixed = 2 * len(str(steps)) + 22  # "57/179 " and " 1:02:03 120ms/step"
        while len(names) > 2 and fixed + self._chars(names) + 5 >= columns:
            names.pop()
        self.names = names
        width = min(20, max(5, columns - 1 - fixed - self._chars(names)))
        self.progbar = keras.utils.Progbar(steps, width=width, stateful_metrics=names)

    def _chars(self, names):
        return sum(len(n) + self.VALUE_CHARS for n in names)

    def due(self, step: int) -> bool:
        now = time.monotonic()
        if now - self.last_draw < self.INTERVAL_S and step < self.steps:
            return False
        self.last_draw = now
        return True

    def draw(self, step: int, model, logs: dict):
        values = {
            # the training model's running accuracy (its history name: train_error)
            "train error %": 100 * (1.0 - float(logs["acc"])),
            "loss": float(logs["loss"]),
            "lr": float(model.optimizer.learning_rate.numpy()),
        }
        if self.hyper:
            values.update((label, model.hyper_values()[key]) for label, key in self.hyper.items())
        self.progbar.update(step, [(n, values[n]) for n in self.names], finalize=False)

    def erase(self):
        sys.stdout.write("\r\x1b[2K")  # the epoch's line takes the bar's place
        sys.stdout.flush()


def _say(text):
    print(text, flush=True)
