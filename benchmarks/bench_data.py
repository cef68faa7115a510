"""Throughput of the CIFAR training input pipeline; writes BENCHMARKS.md's "## Data pipeline".

    .venv/bin/python benchmarks/bench_data.py [--data-dir ../shared/data/cifar10-subset]
                                              [--batches 150] [--repeats 3] [--no-write]

Measures images/s of the augmented CIFAR-10 training pipeline (CenterPaste 40, RandomCrop
32, Flip, mean subtraction, /128) through ``tf.data`` at batch 128, after a warm-up, as the
median of `repeats` runs, in-process and with 2 ZMQ worker processes. It only replaces the
"## Data pipeline" section of BENCHMARKS.md (up to the next "## " heading); the comparison
with cifar-basic-20's training speed is filled in by the `make bench` integration.
"""

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-subset"
SECTION = "## Data pipeline"


def measure(data_dir, batches, workers, batch_size=128):
    from epsresnet_tf.data import pipeline

    pipe = pipeline.make_pipeline(
        "cifar10", "train", data_dir, batch_size, train=True, seed=0, workers=workers
    )
    it = iter(pipe.dataset(0, epochs=None))
    for _ in range(5):  # warm-up: graph building, worker start
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += int(next(it)[1].shape[0])
    return n / (time.perf_counter() - start)


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def versions():
    import cv2
    import numpy
    import tensorflow as tf
    import tensorpack

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"tensorpack {tensorpack.__version__}, numpy {numpy.__version__}, "
        f"OpenCV {cv2.__version__}"
    )


def write_section(path, body):
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        print(
            f"bench-data: error: {args.data_dir} is missing; it needs the CIFAR-10 batches "
            "(the shared subset is at ../shared/data/cifar10-subset)",
            file=sys.stderr,
        )
        return 2
    results = {}
    for workers in (0, 2):
        runs = [measure(args.data_dir, args.batches, workers) for _ in range(args.repeats)]
        results[workers] = statistics.median(runs)
        print(
            f"workers={workers}: "
            + ", ".join(f"{r:.0f}" for r in runs)
            + f" images/s (median {results[workers]:.0f})"
        )
    best = max(results.values())
    body = f"""
Measured by `make bench-data` (`benchmarks/bench_data.py`) on
{datetime.date.today().isoformat()}: {machine()}; {versions()}.

CIFAR-10 training pipeline (tensorpack imgaug CenterPaste 40 → RandomCrop 32 → Flip,
mean-image subtraction, /128) through `tf.data` with prefetch, batch 128, on the real subset
in `../shared/data/cifar10-subset`; {args.batches} batches after a 5-batch warm-up, median of
{args.repeats} runs.

| workers | images/s |
|---|---|
| 0 (in-process) | {results[0]:.0f} |
| 2 (tensorpack ZMQ processes) | {results[2]:.0f} |

Pipeline throughput: **{best:.0f} images/s**.
cifar-basic-20 training consumes: _to be filled in by `make bench` (the model benchmark)_;
the requirement is pipeline ≥ 5× that.
"""
    if not args.no_write:
        write_section(Path(args.out), body)
        print(f"wrote the '{SECTION}' section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
