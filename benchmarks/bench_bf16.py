"""bfloat16 against float32 on real data; writes BENCHMARKS.md's "## bfloat16 accuracy".

    .venv/bin/python benchmarks/bench_bf16.py [--data-dir ../shared/data/cifar10-subset]
        [--recipe benchmarks/recipes/bf16-check.json] [--seeds 0,1] [--epochs N]
        [--steps-per-epoch N] [--out DIR] [--no-write]

Trains the recipe with `epsresnet train` (the real command, one process per run) at
`--precision float32` for every seed and at `--precision bf16` for the first seed, and
compares the final validation errors: the bf16 run matches float32 "within noise" when
its error is within the spread that a change of seed alone gives at float32. Takes
about 20-40 minutes on 2 cores (`make bench-bf16`); not part of `make bench`.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import benchmd  # noqa: E402  (BENCHMARKS.md sections, the machine line)

SECTION = "## bfloat16 accuracy"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-subset"
DEFAULT_RECIPE = HERE / "recipes" / "bf16-check.json"


def train(recipe, precision, seed, args):
    """One `epsresnet train` run; (final history row, wall seconds)."""
    name = f"bf16check-{precision}-seed{seed}"
    cmd = [
        sys.executable,
        "-m",
        "epsresnet_tf.cli",
        "train",
        str(recipe),
        "--data-dir",
        str(args.data_dir),
        "--out",
        str(args.out),
        "--name",
        name,
        "--precision",
        precision,
        "--seed",
        str(seed),
        "--quiet",
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.steps_per_epoch:
        cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    run = Path(args.out) / name
    wall_file = run / "wall-seconds.json"  # beside the run: a rerun (resume) keeps it
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise SystemExit(f"bench_bf16: {name} failed: {tail}")
    if not wall_file.exists():
        wall_file.write_text(json.dumps(time.time() - start))
    rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines() if x]
    return rows[-1], json.loads(wall_file.read_text())


def body(results, args, today):
    from epsresnet_tf.reproduce import readers
    from epsresnet_tf.reproduce.measure import CIFAR_SUBSET_TEST

    lines = [
        f"""
Measured by `make bench-bf16` (`benchmarks/bench_bf16.py`) on {today}: {benchmd.machine_line()}.
`epsresnet train {Path(args.recipe).relative_to(ROOT)}` (ε-ResNet-20, ε = 2.5, side head,
batch 128, 20 epochs of the 5,085-image CIFAR-10 subset with lr 0.1 → 0.01 at epoch 12
→ 0.001 at 17; validation on its {CIFAR_SUBSET_TEST:,} test images), once per row,
`--precision` and `--seed` as given. (The runs were resumed across sessions on a shared
machine, so their wall times say nothing: the speed of bf16 is the training section's.)

| precision | seed | val error | train loss | discarded blocks |
|---|---|---|---|---|"""
    ]
    for (precision, seed), (row, _) in results.items():
        lines.append(
            f"| {precision} | {seed} | {100 * row['val_error']:.2f}% | {row['loss']:.3f} | "
            f"{row['discarded_count']:.2f} |"
        )
    f32 = [row["val_error"] for (p, _), (row, _) in results.items() if p == "float32"]
    bf16 = [row["val_error"] for (p, _), (row, _) in results.items() if p == "bf16"]
    if f32 and bf16:
        # the noise: what a change of seed moved float32 by, or the test set's own
        # sampling noise (2 binomial standard errors on its images), whichever is larger
        spread = max(f32) - min(f32)
        two_se = 2 * readers.standard_error(f32[0], CIFAR_SUBSET_TEST)
        gap = abs(bf16[0] - f32[0])
        verdict = "within" if gap <= max(spread, two_se) else "outside"
        lines.append(
            f"\nbf16 vs float32 at the same seed: {100 * gap:.2f} points; float32 across seeds: "
            f"{100 * spread:.2f} points; 2 standard errors of the test error: "
            f"{100 * two_se:.2f} points: **{verdict} the noise**."
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    ap.add_argument("--seeds", default="0,1", help="float32 seeds; bf16 runs the first")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-bf16"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--bench-md", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results = {}
    for precision, seed in [("float32", seeds[0]), ("bf16", seeds[0])] + [
        ("float32", s) for s in seeds[1:]
    ]:
        results[(precision, seed)] = train(args.recipe, precision, seed, args)
        row, wall = results[(precision, seed)]
        print(f"{precision} seed {seed}: val error {row['val_error']:.4f} ({wall:.0f} s)")
    text = body(results, args, datetime.date.today().isoformat())
    print(text)
    if not args.no_write:
        path = Path(args.bench_md)
        path.write_text(benchmd.replace_section(path.read_text(), SECTION, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
