"""The epoch's file writes, off the training thread (issue 15: the work at an epoch's end
must cost the steps < 0.1 s, or be asynchronous).

At each epoch's end the callbacks copy what they write (the history rows, the variables as
numpy arrays, the kernels a histogram needs) on the training thread, then hand the write
itself (history.jsonl, the TensorBoard events and strip image, the checkpoint with its
manifest and retention) to one writer thread. One thread, jobs in submission order: the
run folder's guarantees stay those of the synchronous writes (each file atomic; a
checkpoint's manifest after its .npz; an epoch's console line printed only once its
checkpoint is on disk, `barrier`). A write that fails (a full disk) raises its one-line
UserError on the training thread at the next epoch's end, or when the run waits for its
writes (`wait`: before the final model, and before the run folder's lock is released).

concurrent.futures gives the thread and the futures; what it does not give is the
error surfacing and the per-job timings `benchmarks/bench_epoch.py` reports.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import defaultdict

import keras


class EpochWriter:
    """Runs `submit`ted jobs in order on one thread (`threaded=False`: at once, on the
    caller's thread, as callbacks built outside a run do)."""

    def __init__(self, threaded: bool = True):
        self.pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="epoch-writer")
            if threaded
            else None
        )
        self.pending: list[concurrent.futures.Future] = []
        self.timings: dict[str, list[float]] = defaultdict(list)  # job name → seconds
        self.failed: BaseException | None = None  # the first job's error
        self.held: threading.Event | None = None  # set: the held jobs may start

    def submit(self, name: str, fn, *args) -> concurrent.futures.Future:
        """Queue `fn(*args)`; first raise the error of a job that already failed."""
        self.raise_failed()
        if self.pool is None:
            future = concurrent.futures.Future()
            future.set_result(self._timed(name, fn, *args))
            return future
        future = self.pool.submit(self._timed, name, fn, *args)
        self.pending.append(future)
        return future

    def hold(self) -> None:
        """Jobs submitted from now on wait for `release` (the jobs already running go on):
        the training thread copies what the epoch writes without a job's Python work (the
        strip's matplotlib, the checkpoint state's JSON) taking the GIL from it."""
        if self.pool is not None and self.held is None:
            self.held = threading.Event()
            self.submit("hold", self.held.wait)

    def release(self) -> None:
        if self.held is not None:
            self.held.set()
            self.held = None

    def hold_callback(self):
        """A Keras callback, first at the epoch's end: `hold`."""
        return _EpochEnd(self.hold)

    def release_callback(self):
        """A Keras callback, after the callbacks that copy: `release`."""
        return _EpochEnd(self.release)

    def barrier(self) -> concurrent.futures.Future:
        """A future done once every job submitted before it is done; it fails when one of
        them failed."""
        return self.submit("barrier", lambda: None)

    def _timed(self, name, fn, *args):
        """Run one job; once one failed, the later ones are skipped (a checkpoint after a
        failed one would hide the failure behind a newer valid state)."""
        if self.failed is not None:
            raise RuntimeError(f"not written: an earlier write failed ({self.failed})")
        start = time.perf_counter()
        try:
            return fn(*args)
        except BaseException as error:
            self.failed = self.failed or error
            raise
        finally:
            self.timings[name].append(time.perf_counter() - start)

    def raise_failed(self) -> None:
        """Raise the first error of the finished jobs (each error is raised once)."""
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        for future in done:
            error = future.exception()
            if error is not None:
                raise error

    def wait(self) -> None:
        """Block until every job is done; raise the first error among them."""
        self.release()  # a held queue (an error between hold and release) must not hang
        concurrent.futures.wait(self.pending)
        self.raise_failed()

    def close(self) -> BaseException | None:
        """Wait for the jobs and stop the thread; the first error, returned (not raised:
        the caller may be unwinding another exception)."""
        try:
            self.wait()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            return error
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
        return None


class _EpochEnd(keras.callbacks.Callback):
    def __init__(self, action):
        super().__init__()
        self.action = action

    def on_epoch_end(self, epoch, logs=None):
        self.action()
