"""SIGINT / SIGTERM during training: finish the step in flight, write nothing of the
unfinished epoch, and end in one line with the shell's exit code (130 / 143).

Python's default SIGINT handler raises KeyboardInterrupt wherever the interpreter happens to
be: inside a TensorFlow op, a callback, or a checkpoint write. Here the handler only records
the signal; `StopCallback` (epsresnet_tf.train.callbacks) looks at it after every step and
raises `Interrupted` out of `fit`, before the epoch's end callbacks write anything. A second
Ctrl-C means "now": by default it raises KeyboardInterrupt; `epsresnet train` passes
`exit_now`, which says the same one line and exits 130 at once (see there why).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

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
        self.said = False  # the one line is out

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


def exit_now(request: StopRequest) -> None:
    """A second Ctrl-C: the one line (unless it is out) and exit 130 at once. Raising
    KeyboardInterrupt instead can land in a finalizer during TensorFlow's teardown, which
    Python reports as "Exception ignored" with a traceback and then goes on. Every write into
    the run folder is atomic and its lock is the OS's, so ending here is as safe as kill -9:
    the same command resumes from the last complete epoch."""
    if not request.said:
        os.write(2, (request.message() + "\n").encode())
    os._exit(EXIT_CODES[signal.SIGINT])


@contextlib.contextmanager
def stop_on_signals(
    enabled: bool = True, on_second: Callable[[StopRequest], None] | None = None
) -> Iterator[StopRequest]:
    """Within the block SIGINT and SIGTERM set the returned request's `signum` instead of
    ending the process; a second SIGINT calls `on_second(request)` (default: raise
    KeyboardInterrupt). The previous handlers come back after it (SIGINT's not once a stop
    was requested with `on_second` given: the process is on its way out). Signal handlers
    can only be set from the main thread: elsewhere (and with `enabled` false) nothing
    changes."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.requested and signum == signal.SIGINT:
            if on_second is None:
                raise KeyboardInterrupt
            on_second(request)
        request.signum = request.signum or signum

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield request
    finally:
        for s, h in previous.items():
            if s == signal.SIGINT and request.requested and on_second is not None:
                continue  # the stop is decided: a later Ctrl-C still ends in on_second
            signal.signal(s, h)
