"""Throughput of the CIFAR training input pipeline; writes BENCHMARKS.md's "## Data pipeline".

    .venv/bin/python benchmarks/bench_data.py [--data-dir ../shared/data/cifar10-subset]
                                              [--batches 150] [--repeats 3] [--no-write]

Measures images/s of the augmented CIFAR-10 training pipeline (CenterPaste 40, RandomCrop
32, Flip, mean subtraction, /128) through ``tf.data`` at batch 128, after a warm-up, as the
median of `repeats` runs, in-process and with 2 ZMQ worker processes, and compares it with
the fastest of our models in `make bench`'s training rounds (benchmarks/results/peer.json;
target: the pipeline ≥ 5× that model's consumption). It only replaces the
"## Data pipeline" section of BENCHMARKS.md.
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmd  # noqa: E402

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


def consumption_line(pipeline_img_s):
    """The pipeline against the fastest of our models in `make bench`'s last training
    rounds (benchmarks/results/peer.json, from benchmarks/bench_peer.py)."""
    peer = benchmd.load_results("peer")
    if not peer:
        return "Consumption: not measured yet (`make bench` measures the models first)."
    import bench_peer

    label, img_s = bench_peer.pipeline_consumption(peer)
    ratio = pipeline_img_s / img_s
    met = "met" if ratio >= 5 else "**not met**"
    return (
        f"The fastest of our models in the training rounds of {peer['date']} "
        f"(`{label}`: {bench_peer.OURS[label]}) consumes **{img_s:.0f} images/s**: "
        f"the pipeline is **{ratio:.1f}×** that (target ≥ 5×: {met}). On a 2-core machine "
        "the two share the cores, so the pipeline's cost is taken from training when both run."
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        print(
            f"bench-data: error: {args.data_dir} is missing; it needs the CIFAR-10 batches "
            "(the shared subset is at ../shared/data/cifar10-subset)",
            file=sys.stderr,
        )
        return 2
    results, loads = {}, [benchmd.load1()]
    for workers in (0, 2):
        runs = [measure(args.data_dir, args.batches, workers) for _ in range(args.repeats)]
        results[workers] = statistics.median(runs)
        print(
            f"workers={workers}: "
            + ", ".join(f"{r:.0f}" for r in runs)
            + f" images/s (median {results[workers]:.0f})"
        )
    loads.append(benchmd.load1())
    best = max(results.values())
    benchmd.save_results("data", {"img_s": results, "best": best, "loads": loads})
    busy = " (**busy machine**)" if max(loads) > benchmd.BUSY_LOAD else ""
    body = f"""
Measured by `make bench` (`benchmarks/bench_data.py`, alone: `make bench-data`) on
{benchmd.today()}: {benchmd.machine_line()}; {versions()}; 1-minute load
{min(loads):.2f}–{max(loads):.2f}{busy}.

CIFAR-10 training pipeline (tensorpack imgaug CenterPaste 40 → RandomCrop 32 → Flip,
mean-image subtraction, /128) through `tf.data` with prefetch, batch 128, on the real subset
in `../shared/data/cifar10-subset`; {args.batches} batches after a 5-batch warm-up, median of
{args.repeats} runs.

| workers | images/s |
|---|---|
| 0 (in-process) | {results[0]:.0f} |
| 2 (tensorpack ZMQ processes) | {results[2]:.0f} |

Pipeline throughput: **{best:.0f} images/s**. {consumption_line(best)}
"""
    if not args.no_write:
        benchmd.write_section(SECTION, body)
        print(f"wrote the '{SECTION}' section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
