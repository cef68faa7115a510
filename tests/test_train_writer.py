"""The epoch's file writes off the training thread (epsresnet_tf/train/writer.py, issue 15):
jobs in order, an epoch's end that does not wait for its writes, a failed write raised
once as its one line, and an epoch's console line only once its checkpoint is on disk."""

import concurrent.futures
import errno
import threading

import numpy as np
import pytest
from _sources import Synthetic, tiny

from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import RunFolder, layout
from epsresnet_tf.runfolder import checkpoints as checkpoint_io
from epsresnet_tf.train.callbacks import HistoryCallback, RunState
from epsresnet_tf.train.loop import run_training
from epsresnet_tf.train.progress import ProgressCallback
from epsresnet_tf.train.writer import EpochWriter


def test_jobs_run_in_order_on_another_thread_and_are_timed():
    writer = EpochWriter()
    seen, main = [], threading.get_ident()
    for i in range(5):
        writer.submit("job", lambda i=i: seen.append((i, threading.get_ident())))
    barrier = writer.barrier()
    writer.wait()
    assert barrier.done() and barrier.exception() is None
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert {t for _, t in seen} != {main}  # not the caller's thread
    assert len(writer.timings["job"]) == 5 and all(t >= 0 for t in writer.timings["job"])
    assert writer.close() is None


def test_a_failed_job_is_raised_once_at_the_next_submit_and_fails_later_barriers():
    writer = EpochWriter()
    gate = threading.Event()

    def fail():
        gate.wait(5)
        raise UserError("no space left writing ckpt/epoch-00002.npz")

    writer.submit("checkpoint", fail)
    barrier = writer.barrier()  # queued behind the failing job
    gate.set()
    concurrent.futures.wait([barrier])
    assert "an earlier write failed" in str(barrier.exception())
    assert writer.timings["checkpoint"] and "barrier" not in writer.timings  # skipped
    with pytest.raises(UserError, match="^no space left writing"):
        writer.submit("history", lambda: None)
    writer.wait()  # raised once: nothing left to raise
    assert writer.close() is None


def test_close_returns_the_error_instead_of_raising_it():
    writer = EpochWriter()
    writer.submit("checkpoint", lambda: 1 / 0)
    assert isinstance(writer.close(), ZeroDivisionError)


def test_an_epochs_end_hands_the_history_write_over_without_waiting(tmp_path):
    (tmp_path / "run").mkdir()
    folder = RunFolder(tmp_path / "run")
    writer, release = EpochWriter(), threading.Event()
    writer.submit("slow", release.wait, 5)  # a write of the epoch before, still going
    state = RunState()
    history = HistoryCallback(folder.append_history, state, writer)
    state.rows.append({"epoch": 1, "discarded_count": 0.0})
    history.on_epoch_end(0)
    state.rows.append({"epoch": 2, "discarded_count": 0.0})  # the next epoch goes on
    assert not folder.history.exists()  # the epoch's end returned before its write
    release.set()
    writer.wait()
    assert [r["epoch"] for r in folder.read_history()] == [1]  # the rows of its epoch
    history.on_epoch_end(1)
    writer.wait()
    assert [r["epoch"] for r in folder.read_history()] == [1, 2]  # each row once
    assert folder.history.read_text().count("\n") == 2


def test_history_appends_all_or_nothing_and_a_cut_last_line_is_not_a_row(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    folder = RunFolder(tmp_path / "run")
    folder.append_history([{"epoch": 1}])
    before = folder.history.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layout.os, "fsync", full)
    with pytest.raises(UserError, match=r"no space left writing .*history.jsonl") as err:
        folder.append_history([{"epoch": 2}])
    assert "\n" not in str(err.value)
    assert folder.history.read_bytes() == before  # cut back to its old end
    monkeypatch.undo()
    with open(folder.history, "ab") as f:  # what a kill during an append leaves
        f.write(b'{"epoch": 2, "lr": 0.')
    assert folder.read_history() == [{"epoch": 1}]
    folder.history.write_text('{"epoch": 1}\n{"epoch": \n{"epoch": 3}\n')
    with pytest.raises(ValueError):  # damage before the last line is not hidden
        folder.read_history()


class Schedule:
    resets = ()

    def reset_at(self, epoch):
        return None


def test_an_epochs_line_waits_for_its_files(capsys):
    saved = concurrent.futures.Future()
    row = {"epoch": 1, "lr": 0.1, "epsilon": 2.5, "train_error": 0.5, "blocks": {}}
    console = ProgressCallback(RunState([row]), 2, 1, Schedule(), verbose=2, saved=lambda: saved)
    console.on_epoch_begin(0)
    console.on_epoch_end(0)
    assert capsys.readouterr().out == ""  # its checkpoint is not on disk yet
    console.on_train_batch_end(0)
    assert capsys.readouterr().out == ""
    saved.set_result(None)
    console.on_train_batch_end(0)  # said at the next step of the next epoch
    assert capsys.readouterr().out.startswith("epoch 1/2: train error 50.00%")


def test_a_write_that_fails_mid_run_stops_it_with_one_line_and_no_line_for_its_epoch(
    tmp_path, monkeypatch, capsys
):
    real = np.savez

    def full(file, *a, **k):
        if "epoch-00002" in str(getattr(file, "name", "")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, *a, **k)

    monkeypatch.setattr(checkpoint_io.np, "savez", full)
    cfg = tiny(epochs=4)
    with pytest.raises(UserError, match="no space left writing .*epoch-00002.npz") as err:
        run_training(cfg, tmp_path / "r", sources=(Synthetic(num_batches=2), None), verbose=2)
    assert "\n" not in str(err.value)
    out = capsys.readouterr().out
    assert "epoch 1/4" in out and "epoch 2/4" not in out  # no line claims epoch 2 saved
    folder = RunFolder(tmp_path / "r")
    assert folder.kept_epochs() == [1]
    assert [p for p in folder.root.rglob("*") if ".tmp" in p.name] == []
    monkeypatch.setattr(
        checkpoint_io.np, "savez", real
    )  # the disk has room again: resume after epoch 1
    result = run_training(cfg, tmp_path / "r", sources=(Synthetic(num_batches=2), None), verbose=0)
    assert result["status"] == "done" and [r["epoch"] for r in result["history"]] == [1, 2, 3, 4]


def test_held_jobs_wait_for_release_and_a_wait_releases_them():
    writer, seen = EpochWriter(), []
    writer.hold()
    writer.submit("job", seen.append, 1)
    done = writer.barrier()
    assert not concurrent.futures.wait([done], timeout=0.3).done
    assert seen == []  # held: the epoch's end is still copying
    writer.release()
    concurrent.futures.wait([done], timeout=5)
    assert seen == [1]
    writer.hold()  # an error between hold and release: wait must not hang
    writer.submit("job", seen.append, 2)
    writer.wait()
    assert seen == [1, 2] and writer.close() is None
