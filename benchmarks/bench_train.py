"""`make bench`'s training-step entry points (issues 6, 15):

    .venv/bin/python benchmarks/bench_train.py --one ARCH [--gate eps] [--precision bf16]
        [--json] ...        one configuration in this process (`--one --help` lists them)
    .venv/bin/python benchmarks/bench_train.py --worker
                            the TensorFlow worker of benchmarks/bench_peer.py's rounds
    .venv/bin/python benchmarks/bench_train.py --levers [--quiet-wait 300] [--no-write]
                            the speed levers, each its own `--one` process (oneDNN and
                            thread settings only take effect at start-up); writes
                            BENCHMARKS.md's "## Levers" (`make bench-levers`)
    .venv/bin/python benchmarks/bench_train.py --header
                            BENCHMARKS.md's header from benchmarks/results/*.json: date,
                            CPU model and ISA flags, versions, and whether the machine
                            was busy while the figures were taken (last step of `make bench`)

The step timed is the one `epsresnet train` runs (benchmarks/trainstep.py).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # trainstep.py beside this file

import benchmd  # noqa: E402
import trainstep  # noqa: E402  (the measurement library; imports TensorFlow lazily)

LEVERS = [  # (label, extra environment, extra `bench_train.py --one` arguments)
    ("fit, graph (the default)", {}, ["--loop", "fit", "--no-jit"]),
    ("fit, Keras BatchNormalization (not fused)", {}, ["--loop", "fit", "--no-jit", "--keras-bn"]),
    ("fit, jit_compile=True (XLA)", {}, ["--loop", "fit", "--jit"]),
    ("fit, XLA, Keras BatchNormalization", {}, ["--loop", "fit", "--jit", "--keras-bn"]),
    ("fit, steps_per_execution=5", {}, ["--loop", "fit", "--no-jit", "--steps-per-execution", "5"]),
    ("fit, bf16 (mixed_bfloat16)", {}, ["--loop", "fit", "--no-jit", "--precision", "bf16"]),
    ("fit, bf16, XLA", {}, ["--loop", "fit", "--jit", "--precision", "bf16"]),
    ("custom tf.function step", {}, ["--loop", "custom", "--no-jit"]),
    ("custom tf.function step, XLA", {}, ["--loop", "custom", "--jit"]),
    ("fit, TF_ENABLE_ONEDNN_OPTS=0", {"TF_ENABLE_ONEDNN_OPTS": "0"}, ["--loop", "fit", "--no-jit"]),
    (
        "fit, oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)",
        {"ONEDNN_MAX_CPU_ISA": "AVX2"},
        ["--loop", "fit", "--no-jit"],
    ),
    ("default, inter-op threads 1", {}, ["--inter-threads", "1"]),
    ("default, intra-op threads 1", {}, ["--intra-threads", "1"]),
    (
        "default, channels_first (needs --jit on CPU)",
        {},
        ["--data-format", "channels_first", "--jit"],
    ),
    # the plain Keras `fit` of issue 6's PyTorch comparison, on the network compared
    (
        "cifar-basic-110: fit, Keras BatchNormalization",
        {},
        ["cifar-basic-110", "--loop", "fit", "--no-jit", "--keras-bn"],
    ),
]


def log(msg):
    print(msg, flush=True)


def bench_cli(args, env=None):
    """One `bench_train.py --one ... --json` process; its JSON or an error string."""
    cmd = [sys.executable, str(HERE / "bench_train.py"), "--one", *args, "--json"]
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return err[:200]
    return json.loads(lines[-1])


def lever_rows(quiet_wait, steps=10):
    rows = []
    for label, env, extra in LEVERS:
        idle = benchmd.wait_quiet(quiet_wait)
        load = benchmd.load1()
        arch, extra = (
            (extra[0], extra[1:]) if not extra[0].startswith("--") else ("cifar-basic-20", extra)
        )
        n = steps if arch == "cifar-basic-20" else 3
        res = bench_cli([arch, "--steps", str(n), "--warmup", "2", "--repeats", "2", *extra], env)
        log(
            f"lever {label}: "
            + (f"{res['img_s_best']:.1f} img/s" if isinstance(res, dict) else res)
        )
        rows.append((label, env, extra, res, idle, load))
    return rows


def levers_body(rows):
    out = [
        f"""
Measured by `make bench-levers` (`benchmarks/bench_train.py --levers`) on {benchmd.today()}:
{benchmd.machine_line()}. cifar-basic-20 (the last row: cifar-basic-110), batch 128, no
gate, each its own `bench_train.py --one ARCH ... --json` process (10 timed steps, 3 on
-110, after 2 warm-up; best of 2 rounds); "load": the 1-minute load average before it.

| configuration | arguments | img/s | speed vs first row | load |
|---|---|---|---|---|"""
    ]
    first = None
    for label, env, extra, res, _idle, load in rows:
        args = " ".join([f"{k}={v}" for k, v in env.items()] + extra)
        if isinstance(res, dict):
            other_net = extra and not extra[0].startswith("--")
            first = first or res["img_s_best"]
            ratio = "—" if other_net else f"{res['img_s_best'] / first:.2f}×"
            out.append(f"| {label} | `{args}` | {res['img_s_best']:.1f} | {ratio} | {load:.2f} |")
        else:
            out.append(f"| {label} | `{args}` | fails: {res} | | {load:.2f} |")
    out.append("\nWhere the time goes: docs/PROFILE.md.")
    return "\n".join(out)


def header_body():
    """Date, machine, versions; the loads the figures of the last `make bench` saw."""
    vers = trainstep.versions()
    name, cores, ghz, isa = trainstep.cpu_details()
    peak = trainstep.peak_gflops()
    loads = []
    for section in ("peer", "epoch", "data"):
        saved = benchmd.load_results(section) or {}
        for entry in saved.get("loads", []):  # per round (before, after), or one value
            loads += [x for x in (entry if isinstance(entry, list) else [entry]) if x is not None]
        loads += [saved[k] for k in ("load_before", "load_after") if saved.get(k) is not None]
    busy = loads and max(loads) > benchmd.BUSY_LOAD
    warning = (
        f"\n**Measured on a busy machine**: the 1-minute load average reached "
        f"{max(loads):.2f} on {cores} cores during the last `make bench` (other work was "
        f"running), so the figures below are noisy and the peer's (OpenMP threads, which "
        f"spin at barriers) suffer more than ours: re-run `make bench` at a quiet time.\n"
        if busy
        else ""
    )
    clock = f" at {ghz:.3f} GHz" if ghz else ""
    peak_text = f", FP32 peak **{peak:.1f} GFLOP/s**" if peak else ""
    return f"""
Last full `make bench`: {benchmd.today()}, on {benchmd.machine_line()}{clock}
({isa.upper()} FMA{peak_text}); Python {vers["python"]}, TensorFlow {vers["tensorflow"]},
Keras {vers["keras"]}, CPU only; the PyTorch peer's version is in its section. Each section
says how it was measured and the 1-minute load average while it was; ratios are taken
within interleaved rounds and reported as median (min–max).
{warning}"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--one"]:  # one configuration, in this process
        return trainstep.main_one(argv[1:])
    if argv[:1] == ["--worker"]:  # the driver's worker (benchmarks/bench_peer.py)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
        return trainstep.serve_worker()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", action="store_true", help="measure the speed levers")
    ap.add_argument("--header", action="store_true", help="write BENCHMARKS.md's header")
    ap.add_argument("--quiet-wait", type=float, default=300)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if not (args.levers or args.header):
        ap.error("give --one, --worker, --levers or --header (make bench runs them all)")
    if args.levers:
        rows = lever_rows(args.quiet_wait)
        benchmd.save_results("levers", rows)
        if not args.no_write:
            benchmd.write_section("## Levers", levers_body(rows))
    if args.header and not args.no_write:
        path = benchmd.BENCHMARKS_MD
        path.write_text(benchmd.replace_header(path.read_text(), header_body()))
        log(f"wrote the header of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
