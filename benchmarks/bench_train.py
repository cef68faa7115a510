"""Training throughput suite of `make bench`; writes BENCHMARKS.md's header block,
"## Training throughput" and "## GPU" (issue 6).

    .venv/bin/python benchmarks/bench_train.py [--archs 20,56,110] [--repeats 5]
        [--no-levers] [--torch-python PATH] [--quiet-wait 300] [--no-write]
        [--json-out PATH] [--from-json PATH]
    .venv/bin/python benchmarks/bench_train.py --one ARCH [--gate eps] [--json] ...
        (one configuration; `--one --help` lists its options)

1. For cifar-basic-20, -56 and -110 at batch 128: gate none, ε-gate with the discard
   monitor on, and ε-gate with the monitor off, built in one process and timed round by
   round interleaved (`trainstep.measure_variants`, benchmarks/trainstep.py), so the
   gate's and the monitor's overheads are ratios within one run. The step timed is the
   one `epsresnet train` runs (the loop's TrainingModel: side head, weight-decay
   staircase, discarded-count average, TF1 momentum; see trainstep.py).
2. Levers on cifar-basic-20 (unless --no-levers): each a separate
   `bench_train.py --one ARCH ... --json` process (oneDNN and thread settings only take
   effect at start-up): jit_compile, steps_per_execution, fit vs a custom tf.function
   around the same train_step, TF_ENABLE_ONEDNN_OPTS=0, thread pools, and channels_first.
3. The PyTorch reference (benchmarks/bench_torch_reference.py) when --torch-python names
   an interpreter with torch.
4. The data pipeline's figure (BENCHMARKS.md "## Data pipeline", `make bench-data`)
   against cifar-basic-20's consumption; the placeholder line there is filled in.

The machine is shared: before measuring, the script waits (up to --quiet-wait seconds)
for the CPU to be ≥ 90% idle, and it records the 1-minute load average with each figure.
Each figure is the best and the median of `repeats` rounds.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # trainstep.py beside this file

import trainstep  # noqa: E402  (the measurement library; imports TensorFlow lazily)

STEPS = {20: 10, 56: 4, 110: 3}  # timed steps per round at batch 128
LEVERS = [  # (label, extra environment, extra `bench_train.py --one` arguments)
    ("fit, graph (the default)", {}, ["--loop", "fit", "--no-jit"]),
    ("fit, Keras BatchNormalization (not fused)", {}, ["--loop", "fit", "--no-jit", "--keras-bn"]),
    ("fit, jit_compile=True (XLA)", {}, ["--loop", "fit", "--jit"]),
    ("fit, XLA, Keras BatchNormalization", {}, ["--loop", "fit", "--jit", "--keras-bn"]),
    ("fit, steps_per_execution=5", {}, ["--loop", "fit", "--no-jit", "--steps-per-execution", "5"]),
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


def cpu_idle(seconds=2.0):
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    a = snap()
    time.sleep(seconds)
    b = snap()
    return (b[0] - a[0]) / max(1, b[1] - a[1])


def wait_quiet(limit):
    """Wait until the CPU is >= 90% idle (other people's work), at most `limit` s."""
    deadline = time.time() + limit
    idle = cpu_idle()
    while idle < 0.9 and time.time() < deadline:
        idle = cpu_idle(5)
    return idle


def load1():
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- measurements -------------------------------------------------------------------------


def gate_rows(archs, repeats, quiet_wait):
    rows = {}
    for depth in archs:
        arch = f"cifar-basic-{depth}"
        idle = wait_quiet(quiet_wait)
        log(f"{arch}: measuring (CPU idle {idle:.0%}, load {load1():.2f})")
        res = trainstep.measure_variants(
            {
                "none": dict(arch=arch, gate="none"),
                "eps": dict(arch=arch, gate="eps", monitor=True),
                "eps_quiet": dict(arch=arch, gate="eps", monitor=False),
            },
            batch=128,
            steps=STEPS.get(depth, 3),
            warmup=2,
            repeats=repeats,
            log=lambda m: log("  " + m),
        )
        for r in res.values():
            r["idle_before"] = idle
        rows[depth] = res
    return rows


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
        idle = wait_quiet(quiet_wait)
        load = load1()
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


def torch_row(python, quiet_wait, depth=110):
    idle = wait_quiet(quiet_wait)
    load = load1()
    script = ROOT / "benchmarks" / "bench_torch_reference.py"
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [python, str(script), "--depth", str(depth), "--steps", "6", "--warmup", "2", "--json"],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = max(runs, key=lambda r: r["img_s"])
    best.update(img_s_runs=[r["img_s"] for r in runs], idle_before=idle, load_before=load)
    log(f"pytorch cifar-basic-{depth}: {best['img_s']:.1f} img/s")
    return best


# --- BENCHMARKS.md ------------------------------------------------------------------------


def replace_section(text, heading, body):
    block = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: block + "\n", text, count=1).rstrip() + "\n"
    return text.rstrip() + "\n\n" + block


def replace_header(text, body):
    """The block between the '# Benchmarks' title and the first '## ' section."""
    if not text.startswith("# Benchmarks"):
        text = "# Benchmarks\n\n" + text
    m = re.search(r"^## ", text, re.M)
    rest = text[m.start() :] if m else ""
    return f"# Benchmarks\n\n{body.strip()}\n\n{rest}".rstrip() + "\n"


def pipeline_figure(text):
    m = re.search(r"Pipeline throughput: \*\*(\d+(?:\.\d+)?) images/s\*\*", text)
    return float(m.group(1)) if m else None


def fill_pipeline_placeholder(text, consumption):
    """The data section's `_to be filled in by make bench_` line, with our figure."""
    return re.sub(
        r"cifar-basic-20 training consumes: [^\n]*;",
        f"cifar-basic-20 training consumes: **{consumption:.0f} images/s** "
        f'(`make bench`, "Training throughput");',
        text,
        count=1,
    )


def pct(a, b):
    return f"{100 * (a / b - 1):+.1f}%"


def round_pct(faster, slower):
    """Median over rounds of the step-time ratio of two variants timed in the same round."""
    import statistics

    return pct(statistics.median(f / s for f, s in zip(faster, slower)), 1.0)


def header_body(machine, vers, peak, today):
    name, cores, ghz, isa = machine
    per_cycle = trainstep.FLOP_PER_CYCLE[isa]
    return f"""
Last full `make bench`: {today}, on {name}, {cores} cores at {ghz:.3f} GHz ({isa.upper()} FMA,
FP32 peak {cores} × {per_cycle} FLOP/cycle × {ghz:.3f} GHz = **{peak:.1f} GFLOP/s**); Python
{vers["python"]}, TensorFlow {vers["tensorflow"]}, Keras {vers["keras"]}, CPU only. Each section
says how it was measured. The machine is shared with other work: figures carry the 1-minute
load average and the best/median of several rounds.
"""


def training_body(rows, levers, torch, pipeline, machine, peak, today, repeats):
    d = trainstep.CPU_DEFAULTS
    out = [
        f"""
Measured by `make bench` (`benchmarks/bench_train.py` on `benchmarks/trainstep.py`) on
{today}. The step timed is the one `epsresnet train` runs, built from the resolved
config as `run_training` builds it (cifar10-eps-110's settings: the loop's TrainingModel
with the side head at weight 0.1, the weight-decay staircase and the discarded-count
average; TF1 momentum 0.9, lr 0.1), on a synthetic in-memory batch of 128 (the input
pipeline is not in the figure), random init. Configuration (the `bench_train.py --one`
defaults, the fastest measured here): loop={d["loop"]},
jit_compile={d["jit_compile"]}, steps_per_execution={d["steps_per_execution"]},
{d["data_format"]}, float32, TensorFlow's default threads. The three variants of each depth
are built in one process and timed round-robin ({repeats} rounds); img/s is the best round
(median in brackets). GFLOP/s = img/s × 3 × 2 × forward MACs (`epsresnet describe`, side head included);
peak {peak:.1f} GFLOP/s. Before each measurement the CPU was ≥ 90% idle (other
people's work had stopped); "load" is the 1-minute load average then, which still
includes this suite's own previous measurement.

| network | variant | img/s best (median) | ms/step | GFLOP/s | % of peak | vs gate none | load |
|---|---|---|---|---|---|---|---|"""
    ]
    names = {"none": "no gate", "eps": "ε-gate, monitor on", "eps_quiet": "ε-gate, monitor off"}
    for depth, res in rows.items():
        base = res["none"]["img_s_best"]
        for key in ("none", "eps_quiet", "eps"):
            r = res[key]
            best = r["img_s_best"]
            share = best * r["train_gflop_per_img"] / peak
            out.append(
                f"| cifar-basic-{depth} | {names[key]} | {best:.1f} ({r['img_s']:.1f}) | "
                f"{1000 * 128 / best:.0f} | {best * r['train_gflop_per_img']:.1f} | "
                f"{100 * share:.0f}% | {'—' if key == 'none' else pct(base, best)} | "
                f"{r['load_before']:.2f} |"
            )
    out.append("")
    out.append(
        "Overheads as step-time ratios (target ≤ 2% each): first from the best rounds, "
        "then [in brackets] the median over rounds of the ratio within one round — "
        "the variants of a round run back to back, so this one is less exposed to the "
        "shared machine's drift. Rounds of one variant differ by a few percent here, "
        "so differences of 1–3% are at the level of the noise:"
    )
    for depth, res in rows.items():
        none, quiet, eps = (res[k]["img_s_best"] for k in ("none", "eps_quiet", "eps"))
        r_none, r_quiet, r_eps = (res[k]["img_s_runs"] for k in ("none", "eps_quiet", "eps"))
        out.append(
            f"- cifar-basic-{depth}: ε-gate without monitor {pct(none, quiet)} "
            f"[{round_pct(r_none, r_quiet)}] step time, monitor on top "
            f"{pct(quiet, eps)} [{round_pct(r_quiet, r_eps)}], together "
            f"{pct(none, eps)} [{round_pct(r_none, r_eps)}]."
        )
    if pipeline and 20 in rows:
        use = rows[20]["eps"]["img_s_best"]
        out.append(
            f'\nData pipeline ("## Data pipeline", `make bench-data`): '
            f"{pipeline:.0f} images/s against cifar-basic-20's consumption of "
            f"{use:.0f} images/s (ε-gate, monitor on): **{pipeline / use:.1f}×** (requirement ≥ 5×). On this "
            f"2-core machine the two share the cores, so the pipeline's cost is taken "
            f"from training when both run."
        )
    if torch:
        out.append("")
        if "error" in torch:
            out.append(f"PyTorch reference: failed ({torch['error']}).")
        else:
            tf110 = rows.get(110)
            line = (
                f"PyTorch reference (`benchmarks/bench_torch_reference.py`, torch "
                f"{torch['torch']} CPU, {torch['threads']} threads, same network and "
                f"batch): cifar-basic-110 **{torch['img_s']:.1f} img/s** "
                f"({torch['gflop_s']:.1f} GFLOP/s, {100 * torch['gflop_s'] / peak:.0f}% of "
                f"peak; load {torch['load_before']:.2f})."
            )
            if tf110:
                ours = tf110["none"]["img_s_best"]
                line += (
                    f" Keras here (the table above, no gate): {ours:.1f} img/s, "
                    f"**{100 * ours / torch['img_s']:.0f}% of PyTorch**."
                )
            plain = [
                r
                for label, _, extra, r, _, _ in levers
                if extra and extra[0] == "cifar-basic-110" and isinstance(r, dict)
            ]
            if plain:
                line += (
                    f" A plain Keras `fit` of it (Keras's unfused BatchNormalization): "
                    f"{plain[0]['img_s_best']:.1f} img/s."
                )
            out.append(line)
    else:
        out.append(
            "\nPyTorch reference: not run (`make bench TORCH_PYTHON=/path/to/python` "
            "with torch installed outside the project's venv)."
        )
    if levers:
        out.append("""
Levers on cifar-basic-20 (the last row: cifar-basic-110), batch 128, no gate, each its own
`bench_train.py --one ARCH ... --json` process (10 timed steps, 3 on -110, after 2 warm-up; best of
2 rounds):

| configuration | arguments | img/s | speed vs first row | load |
|---|---|---|---|---|""")
        first = None
        for label, env, extra, res, _idle, load in levers:
            args = " ".join([f"{k}={v}" for k, v in env.items()] + extra)
            if isinstance(res, dict):
                other_net = extra and not extra[0].startswith("--")
                first = first or res["img_s_best"]
                ratio = "—" if other_net else f"{res['img_s_best'] / first:.2f}×"
                out.append(
                    f"| {label} | `{args}` | {res['img_s_best']:.1f} | {ratio} | {load:.2f} |"
                )
            else:
                out.append(f"| {label} | `{args}` | fails: {res} | | {load:.2f} |")
    out.append("\nWhere the time goes: docs/PROFILE.md.")
    return "\n".join(out)


GPU_BODY = """
**GPU figures pending: not measured.** No GPU was available to the sessions that ran this
suite, so there are no GPU numbers here. The GPU path is the same code with other settings:
`benchmarks/bench_train.py --one ARCH --data-format channels_first --mixed-precision --jit`
(channels_first + mixed_float16 with loss scaling + XLA), and the training loop's
`--gpus N` (MirroredStrategy) with the multi-process tensorpack dataflow
(`data_workers`). On CPU the tests (`tests/test_bench.py`) run the mixed-precision and
XLA paths of the benchmarked step for one step on a tiny net and check the loss is finite; they
say nothing about GPU speed. To fill this section, run on a GPU machine:
`benchmarks/bench_train.py --one cifar-basic-110 --data-format channels_first
--mixed-precision --jit --json` with and without `--gate eps`.
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--one"]:  # one configuration, in this process
        return trainstep.main_one(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="20,56,110")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-levers", action="store_true")
    ap.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON") or None)
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=300,
        help="seconds to wait for an idle CPU before each measurement",
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument(
        "--json-out",
        default=str(ROOT / "benchmarks" / "last-train.json"),
        help="also dump the raw results here (default benchmarks/last-train.json, "
        "git-ignored; --from-json re-renders BENCHMARKS.md from it)",
    )
    ap.add_argument(
        "--from-json",
        default=None,
        help="write BENCHMARKS.md from a saved --json-out instead of measuring",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
    archs = [int(a) for a in args.archs.split(",") if a]

    machine = trainstep.cpu_details()
    peak = trainstep.peak_gflops()
    if args.from_json:  # re-render BENCHMARKS.md from a saved --json-out, no measuring
        saved = json.loads(Path(args.from_json).read_text())
        rows = {int(k): v for k, v in saved["rows"].items()}
        levers = [tuple(x) for x in saved["levers"]]
        torch = saved["torch"]
        args.repeats = len(next(iter(rows.values()))["none"]["img_s_runs"]) if rows else 0
    else:
        rows = gate_rows(archs, args.repeats, args.quiet_wait)
        levers = [] if args.no_levers else lever_rows(args.quiet_wait)
        torch = torch_row(args.torch_python, args.quiet_wait) if args.torch_python else None
    if args.json_out and not args.from_json:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "levers": [(l, e, x, r, i, ld) for l, e, x, r, i, ld in levers],
                    "torch": torch,
                },
                indent=1,
                default=str,
            )
        )
    if args.no_write:
        return 0
    path = Path(args.out)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    today = datetime.date.today().isoformat()
    text = replace_header(text, header_body(machine, trainstep.versions(), peak, today))
    pipeline = pipeline_figure(text)
    text = replace_section(
        text,
        "## Training throughput",
        training_body(rows, levers, torch, pipeline, machine, peak, today, args.repeats),
    )
    text = replace_section(text, "## GPU", GPU_BODY)
    if pipeline and 20 in rows:
        text = fill_pipeline_placeholder(text, rows[20]["eps"]["img_s_best"])
    path.write_text(text)
    log(f"wrote the header, '## Training throughput' and '## GPU' of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
