"""The GPU measurements, in one command (`make bench-gpu`); writes BENCHMARKS.md's "## GPU"
when a GPU is there.

    .venv/bin/python benchmarks/bench_gpu.py [--steps 50] [--repeats 3] [--workers 0,4,8,16]
        [--data-dir ../shared/data/cifar10-subset] [--smoke] [--no-write]

1. cifar-basic-110 training, batch 128 on one GPU, images/s of the step `epsresnet
   train` runs (benchmarks/trainstep.py), at bf16 and fp16, with XLA (the config's
   `xla`), channels_last and channels_first, one and 20 steps per execution (Keras
   dispatch per call matters at ~80 steps/s). Goal (issue 15): ≥ 10,000 img/s on an H100.
2. ImageNet ResNet-152 (imagenet-eps-152-e1.8's config: ε-gates over groups of 42, side
   head, Nesterov), synthetic 224×224 images: step time at its batch of 252 on one GPU,
   bf16 + XLA.
3. The CIFAR training pipeline (benchmarks/bench_data.py) with 0 and many tensorpack
   worker processes: images/s it can feed.

`--smoke`: tiny sizes (cifar-basic-8 at batch 8, imagenet-18 at 32×32 and batch 4, a few
pipeline batches), runnable on a CPU: the command's own test (tests/test_bench.py). On a
machine without a GPU the section is not written: it stays "pending".
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import benchmd  # noqa: E402
import trainstep  # noqa: E402

SECTION = "## GPU"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-subset"

PENDING = """
**GPU figures pending: not measured.** No GPU has been lent to the sessions that ran this
suite. One command measures everything on a GPU machine: `make bench-gpu`
(`benchmarks/bench_gpu.py`): cifar-basic-110 training img/s at batch 128 (bf16 and fp16,
XLA, channels_last and channels_first, 1 and 20 steps per execution; goal ≥ 10,000 img/s
on one H100), ImageNet ResNet-152 step time on synthetic 224×224 data at the recipe's batch
of 252 (bf16 + XLA), and the CIFAR data pipeline with 0 to 16 worker processes. On CPU the
same command runs with `--smoke` (tiny sizes) in the tests; that says nothing about GPU
speed.
"""


def cifar_variants(smoke):
    arch, batch = ("cifar-basic-8", 8) if smoke else ("cifar-basic-110", 128)
    common = dict(arch=arch, gate="eps", batch=batch, jit_compile=True)
    out = {}
    for precision in ("bf16", "fp16"):
        for data_format in ("channels_last", "channels_first"):
            for spe in (1, 20):
                if smoke and (data_format == "channels_first" or spe > 1):
                    continue  # no NCHW convolutions on CPU
                label = f"{arch} {precision} XLA {data_format} spe={spe}"
                out[label] = dict(
                    common, precision=precision, data_format=data_format, steps_per_execution=spe
                )
    return out


def imagenet_variant(smoke):
    if smoke:
        return {
            "imagenet-18 bf16 XLA (smoke)": dict(
                arch="imagenet-18",
                recipe="imagenet-eps-152-e1.8",
                batch=4,
                precision="bf16",
                jit_compile=True,
                input_shape=(32, 32, 3),
                classes=10,
                config={"gate_group": 2},
            )
        }
    return {
        "imagenet-152 bf16 XLA": dict(
            recipe="imagenet-eps-152-e1.8", precision="bf16", jit_compile=True, batch=252
        )
    }


def train_rows(variants, steps, repeats, log):
    rows = {}
    for label, spec in variants.items():
        spec = dict(spec)
        shared = {
            k: spec.pop(k)
            for k in list(spec)
            if k
            in (
                "batch",
                "precision",
                "jit_compile",
                "data_format",
                "steps_per_execution",
                "input_shape",
                "classes",
                "recipe",
            )
        }
        try:
            res = trainstep.measure_variants(
                {label: spec}, steps=steps, repeats=repeats, warmup=2, **shared
            )[label]
        except Exception as err:  # one failing configuration must not lose the others
            res = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        rows[label] = res
        log(f"{label}: " + (f"{res['img_s']:.1f} img/s" if "img_s" in res else res["error"]))
    return rows


def pipeline_rows(data_dir, workers, batches, log):
    import bench_data

    rows = {}
    for n in workers:
        rows[n] = bench_data.measure(data_dir, batches, n)
        log(f"pipeline, {n} workers: {rows[n]:.0f} img/s")
    return rows


def gpus():
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def body(results):
    lines = [
        f"Measured by `make bench-gpu` (`benchmarks/bench_gpu.py`) on {results['date']}: "
        f"{', '.join(results['gpus']) or 'no GPU'}; host {results['machine']}.\n",
        "| configuration | batch | img/s (median) | ms/step |",
        "|---|---|---|---|",
    ]
    for label, r in {**results["cifar"], **results["imagenet"]}.items():
        if "error" in r:
            lines.append(f"| {label} | | fails: {r['error']} | |")
        else:
            lines.append(f"| {label} | {r['batch']} | {r['img_s']:.0f} | {r['step_ms']:.1f} |")
    lines += ["", "| data pipeline workers | images/s |", "|---|---|"]
    lines += [f"| {n} | {v:.0f} |" for n, v in results["pipeline"].items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="0,4,8,16")
    ap.add_argument("--batches", type=int, default=300, help="pipeline batches per figure")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: a CPU test")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
    if args.smoke:
        args.steps, args.repeats, args.workers, args.batches = 2, 1, "0,1", 3
    found = gpus()
    if not found and not args.smoke:
        print("bench_gpu: no GPU here; '## GPU' stays pending (--smoke runs tiny sizes on CPU)")
        return 2
    results = {
        "date": benchmd.today(),
        "machine": benchmd.machine_line(),
        "gpus": found,
        "cifar": train_rows(cifar_variants(args.smoke), args.steps, args.repeats, print),
        "imagenet": train_rows(imagenet_variant(args.smoke), args.steps, args.repeats, print),
        "pipeline": pipeline_rows(
            args.data_dir, [int(w) for w in args.workers.split(",")], args.batches, print
        ),
    }
    text = body(results)
    print(text)
    benchmd.save_results("gpu-smoke" if args.smoke else "gpu", results)
    if found and not args.smoke and not args.no_write:
        benchmd.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
