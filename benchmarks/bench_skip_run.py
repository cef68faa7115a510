"""A whole run in which blocks go, the backward skip on and off; writes BENCHMARKS.md's
"## Backward skip: a whole run".

    .venv/bin/python benchmarks/bench_skip_run.py [--recipe demo] [--rounds 2]
        [--quiet-wait 300] [--smoke] [--no-write]

`epsresnet train RECIPE` (default `make demo`'s recipe: ResNet-20 on the digits, ε = 5,
15 epochs; 3 to 6 of its 9 blocks go within the first epochs) as a user runs it, one
fresh process per run, with `--set backward_skip=true` and `=false` alternating round
after round in fresh run folders. Figures: the command's wall time (start-up and model
build included) and the sum of the epochs' own times from history.jsonl. The two runs of
each round must end with bit-identical checkpoints, or the benchmark fails.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import benchmd  # noqa: E402

SECTION = "## Backward skip: a whole run"
EPOCH_TIME = re.compile(r"^epoch \d+/\d+: .*?, ([0-9.]+)s(?:;|$)", re.M)


def one_run(recipe, skip, out, extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    argv = [sys.executable, "-m", "epsresnet_tf.cli", "train", recipe, "--quiet"]
    argv += ["--set", f"backward_skip={'true' if skip else 'false'}", *extra, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench_skip_run: {' '.join(argv[2:])} failed:\n{proc.stderr[-2000:]}")
    (run,) = [p for p in Path(out).iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    # each epoch's own time, as the console's epoch line gives it ("…, 12.9s")
    times = [float(m) for m in EPOCH_TIME.findall(proc.stdout)]
    return run, {
        "wall_s": wall,
        "epochs_s": sum(times),
        "epochs": len(rows),
        "discarded_count": rows[-1]["discarded_count"],
    }


def same_checkpoints(a, b):
    from epsresnet_tf.runfolder import RunFolder

    (va, _), (vb, _) = RunFolder(a).load_latest(), RunFolder(b).load_latest()
    return len(va) == len(vb) and all(x.tobytes() == y.tobytes() for x, y in zip(va, vb))


def measure(args):
    extra = ["--epochs", "2", "--set", "arch=cifar-basic-8"] if args.smoke else []
    idle = benchmd.wait_quiet(args.quiet_wait)
    runs = {True: [], False: []}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            before = benchmd.load1()
            folders = {}
            order = (True, False) if r % 2 == 0 else (False, True)  # who goes first alternates
            for skip in order:
                folders[skip], fig = one_run(args.recipe, skip, Path(tmp) / f"{r}-{skip}", extra)
                runs[skip].append(fig)
            if not same_checkpoints(folders[True], folders[False]):
                raise SystemExit("bench_skip_run: the two runs' checkpoints differ")
            loads.append([before, benchmd.load1()])
            print(
                f"round {r + 1}/{args.rounds}: skip on {runs[True][-1]['wall_s']:.1f} s, "
                f"off {runs[False][-1]['wall_s']:.1f} s; checkpoints bit-identical",
                flush=True,
            )
    return {
        "date": benchmd.today(),
        "machine": benchmd.machine_line(),
        "recipe": args.recipe,
        "idle_before": idle,
        "rounds": args.rounds,
        "loads": loads,
        "runs": {"on": runs[True], "off": runs[False]},
    }


def body(results):
    on, off = results["runs"]["on"], results["runs"]["off"]

    def spread(values, fmt="{:.1f}"):
        return (
            f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}–{fmt.format(max(values))})"
        )

    wall = [b["wall_s"] / a["wall_s"] for a, b in zip(on, off)]
    epochs = [b["epochs_s"] / a["epochs_s"] for a, b in zip(on, off) if a["epochs_s"]]
    loads = [x for pair in results["loads"] for x in pair if x is not None]
    return f"""
Measured by `make bench` (`benchmarks/bench_skip_run.py`) on {results["date"]}:
{results["machine"]}; 1-minute load {min(loads):.2f}–{max(loads):.2f}.
`epsresnet train {results["recipe"]}` as a user runs it (a fresh process per run, start-up
and model build included), `--set backward_skip=true` and `=false` alternating in
{results["rounds"]} rounds; the two runs of each round end with bit-identical checkpoints
(checked). {on[0]["epochs"]} epochs; discarded count at the end
{on[-1]["discarded_count"]:.2f}. Median (min–max) over the rounds.

| | skip on | skip off | off / on |
|---|---|---|---|
| wall time of the command, s | {spread([r["wall_s"] for r in on])} | {spread([r["wall_s"] for r in off])} | {spread(wall, "{:.2f}")}× |
| sum of the epochs' times, s | {spread([r["epochs_s"] for r in on])} | {spread([r["epochs_s"] for r in off])} | {spread(epochs, "{:.2f}") if epochs else "—"}× |
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quiet-wait", type=float, default=300)
    ap.add_argument("--smoke", action="store_true", help="2 epochs of ResNet-8, one round")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.quiet_wait = 1, 0
    results = measure(args)
    benchmd.save_results("skip-run-smoke" if args.smoke else "skip-run", results)
    if not args.no_write and not args.smoke:
        benchmd.write_section(SECTION, body(results))
        print(f"wrote '{SECTION}' of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
