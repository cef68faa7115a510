"""SIGINT / SIGTERM during training: finish the step in flight, write nothing of the
unfinished epoch, and end in one line with the shell's exit code (130 / 143).

Python's default SIGINT handler raises KeyboardInterrupt wherever the interpreter happens to
be: inside a TensorFlow op, a callback, or a checkpoint write. Here the handler only records
the signal; `StopCallback` (epsresnet_tf.train.callbacks) looks at it after every step and
raises `Interrupted` out of `fit`, before the epoch's end callbacks write anything. A second
Ctrl-C raises KeyboardInterrupt at once (a user who presses it twice means it); the loop
ends that in the same one line, and every write into the run folder is atomic.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: The shell's exit status of a process ended by the signal (128 + its number).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Exception):
    """Raised out of `fit` at a step boundary once a stop was requested."""


class StopRequest:
    """The signal received (None: none yet) and where training was: `epoch` (1-based, the
    epoch in progress; None before the run folder was read) and `step` (steps finished in
    it)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.epoch: int | None = None
        self.step = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise Interrupted if a stop was requested."""
        if self.requested:
            raise Interrupted

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)  # KeyboardInterrupt without our handler

    def message(self) -> str:
        where = (
            f"at epoch {self.epoch} step {self.step}"
            if self.epoch is not None
            else "before training began"
        )
        return f"stopped {where}; run the same command to resume"


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[StopRequest]:
    """Within the block SIGINT and SIGTERM set the returned request's `signum` instead of
    ending the process; the previous handlers come back after it. Signal handlers can only
    be set from the main thread: elsewhere (and with `enabled` false) nothing changes."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = request.signum or signum

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
