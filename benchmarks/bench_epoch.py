"""The per-epoch work outside the training steps; writes BENCHMARKS.md's
"## Per-epoch overhead".

    .venv/bin/python benchmarks/bench_epoch.py [--arch cifar-basic-110] [--epochs 6]
        [--history 300] [--smoke] [--no-write]

`epsresnet train`'s own run (`epsresnet_tf.train.loop._TrainingRun`: the run folder, the
model, and the callbacks it builds — whatever they are: schedules, monitor, history,
TensorBoard, checkpoint) trains cifar10-eps-110's config for `--epochs` epochs of one
step each on a synthetic batch, without validation, in a temporary run folder. Every
callback is wrapped so that each of its hooks is timed, and a clock at both ends of the
list times each epoch: "outside the steps" is the epoch's wall time less its step's.
Run twice: from epoch 0, and resumed after `--history` epochs of history (the history
file and the checkpoint's state grow with the epochs; a run of cifar10-eps-110 lasts
hundreds of epochs). Target (issue 15): below 0.1 s per epoch, 2% of a CIFAR epoch at
GPU speed (390 steps at 10,000 img/s), or done asynchronously.
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import benchmd  # noqa: E402

SECTION = "## Per-epoch overhead"
TARGET_S = 0.1


class SyntheticSource:
    """One fixed batch of random images, the loop's source interface."""

    def __init__(self, batch, shape, classes=10, num_batches=1):
        import numpy as np

        rng = np.random.default_rng(0)
        self.image_shape, self.num_classes, self.num_batches = tuple(shape), classes, num_batches
        self.x = rng.standard_normal((batch,) + self.image_shape).astype(np.float32)
        self.y = rng.integers(0, classes, batch).astype(np.int32)

    def batches(self, data_pass):
        for _ in range(self.num_batches):
            yield self.x, self.y

    def normalise_np(self, x):
        return x


def timed_callback(inner, seconds):
    """A Keras callback that forwards every hook to `inner` and adds the time each took
    to seconds[(name, hook)][epoch]."""
    import keras

    name = type(inner).__name__

    class Timed(keras.callbacks.Callback):
        epoch = 0

        def set_model(self, model):
            super().set_model(model)
            inner.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            inner.set_params(params)

        def __getattribute__(self, attr):
            if attr.startswith("on_") and callable(getattr(inner, attr, None)):
                hook = getattr(inner, attr)

                def call(*args, **kwargs):
                    if attr == "on_epoch_begin":
                        Timed.epoch = args[0]
                    start = time.perf_counter()
                    out = hook(*args, **kwargs)
                    seconds[(name, attr)][Timed.epoch] += time.perf_counter() - start
                    return out

                return call
            return super().__getattribute__(attr)

    return Timed()


def clocks(stamps):
    """Two callbacks for both ends of the list: the epoch's start and end, and each
    training step's begin and end (the first callback sees a step begin first and end
    first)."""
    import keras

    class First(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            stamps.append(["begin", epoch, time.perf_counter()])

        def on_train_batch_begin(self, batch, logs=None):
            stamps.append(["step_begin", batch, time.perf_counter()])

        def on_train_batch_end(self, batch, logs=None):
            stamps.append(["step_end", batch, time.perf_counter()])

    class Last(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stamps.append(["end", epoch, time.perf_counter()])

    return First(), Last()


def Drain(writer):
    """Waits, before an epoch's clock starts, for the writer thread to finish the epoch
    before: epochs here are one step long, so its jobs would still be running at the next
    epoch's end and take the GIL from it; in a real epoch (390 steps and more) they finish
    during the steps. The epoch's end is then timed as a real run pays it."""
    import keras

    class DrainCallback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            writer.wait()

    return DrainCallback()


def epoch_figures(stamps):
    """{epoch: (wall seconds, seconds in steps)} from the clocks' stamps."""
    out, begin, steps, open_step = {}, None, 0.0, None
    for kind, index, t in stamps:
        if kind == "begin":
            begin, steps = t, 0.0
        elif kind == "step_begin":
            open_step = t
        elif kind == "step_end" and open_step is not None:
            steps += t - open_step
        elif kind == "end":
            out[index] = (t - begin, steps)
    return out


def config(arch, epochs, batch, histogram_every=1):
    from epsresnet_tf import recipes

    _, cfg = recipes.resolve(
        "cifar10-eps-110",
        val_steps=0,
        epochs=epochs,
        batch_size=batch,
        steps_per_epoch=1,
    )
    cfg.update(arch=arch, histogram_every=histogram_every)
    return cfg


def late_rows(rows, count):
    """`count` history rows like `rows[0]`, numbered 1..count: the history of a run that
    has trained `count` epochs."""
    out = []
    for i in range(count):
        row = copy.deepcopy(rows[0])
        row["epoch"] = i + 1
        out.append(row)
    return out


def one_run(cfg, folder, shape, history=None):
    """Train cfg in `folder` (resuming after `history` rows if given); returns
    (per-callback seconds {(name, hook): {epoch: s}}, {epoch: (wall, steps)}, rows)."""
    from epsresnet_tf.train.loop import _TrainingRun

    source = SyntheticSource(cfg["batch_size"], shape)
    if history:  # train cfg's epochs after the history's: the run's config counts them all
        cfg = dict(cfg, epochs=len(history) + cfg["epochs"])
    run = _TrainingRun(cfg, folder, None, (source, None), None)
    try:
        run.restore()
        if history:
            run.state.rows = history
            run.start = len(history)
        seconds = defaultdict(lambda: defaultdict(float))
        stamps = []
        first, last = clocks(stamps)
        cbs = [timed_callback(cb, seconds) for cb in run.callbacks(verbose=2)]
        run.fit([Drain(run.writer), first, *cbs, last])
        run.wait_for_writes()
        run.finish()
    finally:
        run.writer.close()
        run.owner.close()
    background = {
        name: list(t) for name, t in run.writer.timings.items() if name not in ("barrier", "hold")
    }
    return seconds, epoch_figures(stamps), run.state.rows, background


def summarise(seconds, figures, background, skip_first=True):
    """Median seconds per epoch: per callback hook, and outside the steps in all; and
    each job of the run's writer thread (train/writer.py), which overlaps the next steps."""
    epochs = sorted(figures)
    use = epochs[1:] if skip_first and len(epochs) > 1 else epochs
    per_hook = {
        f"{name}.{hook}": statistics.median(by_epoch.get(e, 0.0) for e in use)
        for (name, hook), by_epoch in seconds.items()
        if hook in ("on_epoch_begin", "on_epoch_end")
    }
    outside = [figures[e][0] - figures[e][1] for e in use]
    return {
        "epochs": len(use),
        "outside_s": statistics.median(outside),
        "outside_runs": outside,
        "step_s": statistics.median(figures[e][1] for e in use),
        "first_epoch_outside_s": figures[epochs[0]][0] - figures[epochs[0]][1],
        "hooks": {k: v for k, v in sorted(per_hook.items(), key=lambda kv: -kv[1]) if v > 0},
        "background": {
            name: statistics.median(t[1:] if skip_first and len(t) > 1 else t)
            for name, t in sorted(background.items())
        },
    }


def measure(args, log=print):
    cfg = config(args.arch, args.epochs, args.batch)
    shape = (8, 8, 3) if args.smoke else (32, 32, 3)
    out = {"date": benchmd.today(), "machine": benchmd.machine_line(), "arch": args.arch}
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        out["load_before"] = benchmd.load1()
        seconds, figures, rows, background = one_run(copy.deepcopy(cfg), Path(tmp) / "fresh", shape)
        out["fresh"] = summarise(seconds, figures, background)
        log(f"from epoch 0: {out['fresh']['outside_s']:.3f} s outside the steps per epoch")
        if args.history:
            seconds, figures, _, background = one_run(
                copy.deepcopy(cfg), Path(tmp) / "late", shape, late_rows(rows, args.history)
            )
            out["late"] = summarise(seconds, figures, background)
            out["history"] = args.history
            log(
                f"after {args.history} epochs: {out['late']['outside_s']:.3f} s outside "
                "the steps per epoch"
            )
        out["load_after"] = benchmd.load1()
    return out


def body(results):
    loads = [results["load_before"], results["load_after"]]
    busy = max(loads) > benchmd.BUSY_LOAD
    lines = [
        f"""
Measured by `make bench` (`benchmarks/bench_epoch.py`) on {results["date"]}: {results["machine"]};
1-minute load {min(loads):.2f}–{max(loads):.2f}{" (**busy machine**)" if busy else ""}.

The work `epsresnet train` does at each epoch's end, outside the training steps and
without validation: the callbacks the run builds (`_TrainingRun.callbacks()`: schedules,
monitor row, history.jsonl, TensorBoard scalars + per-block kernel histograms + the
discard strip, the checkpoint with its manifest), on {results["arch"]} with cifar10-eps-110's
config, epochs of one step; median over the epochs after the first. Target: < {TARGET_S} s
per epoch (2% of a 5 s CIFAR epoch at 10,000 img/s) or asynchronous.
"""
    ]
    runs = [("from epoch 0", results["fresh"])]
    if "late" in results:
        runs.append((f"after {results['history']} epochs of history", results["late"]))
    lines.append("| | outside the steps per epoch | target |")
    lines.append("|---|---|---|")
    for label, r in runs:
        met = "met" if r["outside_s"] < TARGET_S else "**not met**"
        lines.append(f"| {label} | {r['outside_s']:.3f} s | {met} |")
    lines.append("\nBy callback hook (seconds per epoch, median; those above 1 ms):\n")
    names = list(dict.fromkeys(k for _, r in runs for k in r["hooks"]))
    lines.append("| hook | " + " | ".join(label for label, _ in runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for name in names:
        values = [r["hooks"].get(name, 0.0) for _, r in runs]
        if max(values) >= 0.001:
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines.append(
        "\nOn the run's writer thread (`epsresnet_tf/train/writer.py`), overlapping the next"
        " epoch's steps (seconds per epoch, median):\n"
    )
    jobs = list(dict.fromkeys(k for _, r in runs for k in r.get("background", {})))
    lines.append("| job | " + " | ".join(label for label, _ in runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for job in jobs:
        values = [r.get("background", {}).get(job, 0.0) for _, r in runs]
        lines.append(f"| {job} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cifar-basic-110")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--history", type=int, default=300, help="epochs of history; 0: skip")
    ap.add_argument("--smoke", action="store_true", help="cifar-basic-8, 8x8 images: a test")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
    if args.smoke:
        args.arch, args.epochs, args.batch, args.history = "cifar-basic-8", 3, 8, 5
    results = measure(args)
    print(body(results))
    if not args.smoke:
        benchmd.save_results("epoch", results)
        if not args.no_write:
            benchmd.write_section(SECTION, body(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
