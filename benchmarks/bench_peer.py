"""Ours against PyTorch at its best, and the ε-gate's overhead, in interleaved rounds;
writes BENCHMARKS.md's "## Training: ours vs PyTorch" and "## ε-gate overhead".

    .venv/bin/python benchmarks/bench_peer.py [--peer-python benchmarks/.venv-peer/bin/python]
        [--rounds 7] [--steps 6] [--warmup 2] [--quiet-wait 300] [--no-peer] [--no-compile]
        [--smoke] [--no-write]

Two long-lived workers (benchmarks/workers.py): ours, `bench_train.py --worker` in the
project's venv, timing the step `epsresnet train` runs (benchmarks/trainstep.py); and the
peer, `bench_torch_reference.py --worker` in benchmarks/.venv-peer (`make bench-peer`),
the same network, batch, loss and optimizer in PyTorch. Each builds and warms up its
variants once; then, round after round, the driver tells one worker at a time "time N
steps of variant X now", alternating ours and the peer's, so both see the same drifts
of the shared machine. Figures are images/s per round; ratios are taken within each round
(ours / the peer's best, gate / no gate) and reported as the median and min–max over the
rounds. "The peer's best" per precision is its variant with the highest median: PyTorch
with channels_last, eager or torch.compile, autocast bfloat16 for the bf16 row.

`--smoke`: tiny nets (cifar-basic-8, batch 8), one round, no torch.compile, nothing
written unless --write: the driver's own test (tests/test_bench.py).
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import benchmd  # noqa: E402
import workers  # noqa: E402

DEFAULT_PEER = HERE / ".venv-peer" / "bin" / "python"
ARCH, DEPTH, BATCH = "cifar-basic-110", 110, 128

#: Our variants (trainstep.build_variant specs). The gate-none rows are the network the
#: peer builds; "eps" is cifar10-eps-110's ε-gate with its monitors, "eps-quiet" without
#: them; "-20" is the fastest consumer of the data pipeline (BENCHMARKS.md "## Data pipeline").
OURS = {
    "ours-f32": dict(gate="none", precision="float32"),
    "ours-bf16": dict(gate="none", precision="bf16"),
    "ours-f32-eps": dict(gate="eps", precision="float32"),
    "ours-bf16-eps": dict(gate="eps", precision="bf16"),
    "ours-f32-eps-quiet": dict(gate="eps", monitor=False, precision="float32"),
    "ours-bf16-20": dict(gate="eps", precision="bf16", arch="cifar-basic-20"),
}
#: The backward skip's rows (BENCHMARKS.md "## Backward skip"): cifar10-eps-110 with a
#: fraction of its 54 blocks closed for good (trainstep.close_blocks: a fixed pattern over
#: the groups), the skip on (the default) and off; 0% on is "ours-*-eps" above.
SKIP_FRACTIONS = (0.25, 0.5, 0.8)
for _tag, _precision in (("f32", "float32"), ("bf16", "bf16")):
    OURS[f"ours-{_tag}-eps-noskip"] = dict(
        gate="eps", precision=_precision, config={"backward_skip": False}
    )
    for _f in SKIP_FRACTIONS:
        _pct = round(100 * _f)
        OURS[f"ours-{_tag}-eps-c{_pct}"] = dict(gate="eps", precision=_precision, closed=_f)
        OURS[f"ours-{_tag}-eps-c{_pct}-noskip"] = dict(
            gate="eps", precision=_precision, closed=_f, config={"backward_skip": False}
        )
#: The peer's variants (bench_torch_reference.Variant settings).
PEER = {
    "torch-f32": dict(channels_last=True, precision="float32"),
    "torch-bf16": dict(channels_last=True, bf16=True, precision="bf16"),
    "torch-f32-compile": dict(channels_last=True, compile=True, precision="float32"),
    "torch-bf16-compile": dict(channels_last=True, compile=True, bf16=True, precision="bf16"),
}


def plan(args):
    """({label: spec} of ours, {label: spec} of the peer's) for these arguments."""
    arch, depth, batch = ("cifar-basic-8", 8, 8) if args.smoke else (ARCH, DEPTH, BATCH)
    ours = {}
    for label, spec in OURS.items():
        if args.smoke and label.endswith("-20"):
            continue
        skip_row = "-noskip" in label or "-eps-c" in label
        if skip_row and (args.no_skip_rows or (args.smoke and "f32-eps-c50" not in label)):
            continue  # a smoke run keeps one pair: f32 at 50% closed, skip on and off
        ours[label] = {"arch": arch, "batch": batch, "warmup": args.warmup, **spec}
    peer = {}
    if not args.no_peer:
        for label, spec in PEER.items():
            if spec.get("compile") and (args.no_compile or args.smoke):
                continue
            settings = {k: v for k, v in spec.items() if k != "precision"}
            peer[label] = dict(depth=depth, batch=batch, warmup=args.warmup, **settings)
    return ours, peer


def interleaved(ours, peer):
    """The order within a round: ours and the peer's alternating, as long as both last."""
    a, b, out = list(ours), list(peer), []
    while a or b:
        out += [a.pop(0)] if a else []
        out += [b.pop(0)] if b else []
    return out


def precision_of(label):
    return "bf16" if "bf16" in label else "float32"


def start_workers(args, log):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    ours = workers.Worker(
        "ours", [sys.executable, str(HERE / "bench_train.py"), "--worker"], env=env, cwd=ROOT
    )
    peer = None
    if not args.no_peer:
        python = Path(args.peer_python)
        if not python.exists():
            raise SystemExit(
                f"bench_peer: no peer interpreter at {python}: run `make bench-peer` "
                "(or pass --no-peer)"
            )
        peer = workers.Worker(
            "peer",
            [str(python), str(HERE / "bench_torch_reference.py"), "--worker"],
            env=dict(os.environ),
            cwd=ROOT,
        )
    log(
        f"workers started (ours: pid {ours.proc.pid}"
        + (f", peer: {peer.proc.pid})" if peer else ")")
    )
    return ours, peer


def setup_all(ours_w, peer_w, ours, peer, log):
    """Build every variant: both workers at once (each builds its own in turn)."""
    for label, spec in ours.items():
        ours_w.send("setup", name=label, spec=spec)
    for label, spec in (peer or {}).items():
        peer_w.send("setup", name=label, spec=spec)
    built = {}
    for worker, specs in ((ours_w, ours), (peer_w, peer)):
        for label in specs or {}:
            built[label] = worker.receive()
            log(f"{label}: built and warmed up in {built[label]['build_s']:.0f} s")
    return built


def measure(args, log=print):
    ours, peer = plan(args)
    idle = benchmd.wait_quiet(args.quiet_wait)
    log(f"CPU idle {idle:.0%}, load {benchmd.load1():.2f}")
    ours_w, peer_w = start_workers(args, log)
    try:
        info = {"ours": ours_w.request("info")}
        if peer_w:
            info["peer"] = peer_w.request("info")
        built = setup_all(ours_w, peer_w, ours, peer, log)
        batch = {label: b["batch"] for label, b in built.items()}
        order = interleaved(ours, peer)

        def time_one(worker, label):
            answer = worker.request("time", name=label, steps=args.steps)
            return answer["steps"] * batch[label] / answer["seconds"]

        rates = {label: [] for label in order}
        loads = []
        for r in range(args.rounds):
            before = benchmd.load1()
            for label in order:
                rates[label].append(time_one(ours_w if label in ours else peer_w, label))
            loads.append([before, benchmd.load1()])
            log(
                f"round {r + 1}/{args.rounds} (load {before:.2f}): "
                + ", ".join(f"{label} {rates[label][-1]:.1f}" for label in order)
            )
    finally:
        ours_w.close()
        if peer_w:
            peer_w.close()
    return {
        "date": benchmd.today(),
        "machine": benchmd.machine_line(),
        "idle_before": idle,
        "info": info,
        "rounds": args.rounds,
        "steps": args.steps,
        "order": order,
        "loads": loads,
        "variants": {
            label: {
                "who": "ours" if label in ours else "peer",
                "precision": precision_of(label),
                "spec": (ours | peer)[label],
                "setup": built[label],
                "img_s_runs": rates[label],
                "img_s": statistics.median(rates[label]),
            }
            for label in order
        },
    }


# --- analysis -----------------------------------------------------------------------------


def spread(values):
    """(median, min, max) of a list."""
    return statistics.median(values), min(values), max(values)


def per_round(a, b, f):
    """f(a_r, b_r) for each round r."""
    return [f(x, y) for x, y in zip(a, b)]


def peer_best(results, precision):
    """The label of the peer's variant of `precision` with the highest median img/s."""
    labels = [
        label
        for label, v in results["variants"].items()
        if v["who"] == "peer" and v["precision"] == precision
    ]
    return max(labels, key=lambda label: results["variants"][label]["img_s"]) if labels else None


def ratios(results, ours_label, precision):
    """Per-round ours / the peer's best of `precision` (None without a peer)."""
    best = peer_best(results, precision)
    if best is None or ours_label not in results["variants"]:
        return None, None
    v = results["variants"]
    return best, per_round(v[ours_label]["img_s_runs"], v[best]["img_s_runs"], lambda a, b: a / b)


def overhead(results, base, other):
    """Per-round step-time overhead of `other` over `base`, in percent."""
    v = results["variants"]
    if base not in v or other not in v:
        return None
    return per_round(v[base]["img_s_runs"], v[other]["img_s_runs"], lambda a, b: 100 * (a / b - 1))


# --- BENCHMARKS.md ------------------------------------------------------------------------


def fmt_spread(values, unit="", digits=2, sign=False):
    med, lo, hi = spread(values)
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(med)}{unit} ({f.format(lo)}–{f.format(hi)})"


def load_note(results):
    loads = [x for pair in results["loads"] for x in pair if x is not None]
    if not loads:
        return ""
    busy = max(loads) > benchmd.BUSY_LOAD
    return f"1-minute load during the rounds {min(loads):.2f}–{max(loads):.2f}" + (
        " (**busy machine: figures noisy, to be re-measured on a quiet one**)" if busy else ""
    )


def training_body(results):
    v = results["variants"]
    info = results["info"]
    peer = info.get("peer")
    peer_line = (
        f"PyTorch {peer['torch']} ({peer['threads']} threads, {peer['cpu_capability']})"
        if peer
        else "PyTorch: not run"
    )
    out = [
        f"""
Measured by `make bench` (`benchmarks/bench_peer.py`) on {results["date"]}: {results["machine"]};
TensorFlow {info["ours"]["tensorflow"]}, Keras {info["ours"]["keras"]}, {peer_line}.
{load_note(results)}.

cifar-basic-110 (the `epsresnet train` network: pre-activation, side head at weight 0.1),
batch 128, synthetic in-memory batch, momentum SGD 0.9 with weight decay 2e-4 on the
kernels. Ours is the step `epsresnet train` runs (benchmarks/trainstep.py: the loop's
TrainingModel, TF1 momentum, the weight-decay staircase; Keras `fit`, graph mode with oneDNN,
channels_last) at `--precision float32` and `bf16` (Keras mixed_bfloat16). The peer
(`benchmarks/bench_torch_reference.py`, its own venv: `make bench-peer`) is the same
network, loss and optimizer in PyTorch, channels_last, eager and torch.compile, with
torch.autocast(bfloat16) for bf16. {results["rounds"]} interleaved rounds of
{results["steps"]} steps per variant after a warm-up, ours and the peer's alternating
(order: {", ".join(results["order"])}); img/s: median (min–max) over the rounds.

| variant | precision | img/s median (min–max) |
|---|---|---|""".rstrip()
    ]
    for label, r in v.items():
        runs = r["img_s_runs"]
        out.append(f"| {label} | {r['precision']} | {fmt_spread(runs, digits=1)} |")
    out.append(
        "\nOurs (gate none, the same network) against PyTorch's best variant of the same "
        "precision, as a ratio within each round (target ≥ 1.2×):\n"
    )
    out.append("| precision | ours | PyTorch's best | ratio median (min–max) | target 1.2× |")
    out.append("|---|---|---|---|---|")
    for precision, ours_label in (("float32", "ours-f32"), ("bf16", "ours-bf16")):
        best, rs = ratios(results, ours_label, precision)
        if rs is None:
            out.append(f"| {precision} | {ours_label} | not run | | |")
            continue
        met = "met" if round(statistics.median(rs), 3) >= 1.2 else "**not met**"
        out.append(f"| {precision} | {ours_label} | {best} | {fmt_spread(rs, '×')} | {met} |")
    f32, bf16 = v.get("ours-f32"), v.get("ours-bf16")
    if f32 and bf16:
        gain = per_round(bf16["img_s_runs"], f32["img_s_runs"], lambda a, b: a / b)
        out.append(f"\nOurs bf16 / ours float32: {fmt_spread(gain, '×')}.")
    out.append("\nWhere the time goes and what was tried: docs/PROFILE.md.")
    return "\n".join(out)


def gate_body(results):
    out = [
        f"""
From the same interleaved rounds ({results["rounds"]} rounds, `make bench`,
{results["date"]}; {load_note(results)}): the step-time overhead of cifar10-eps-110's
ε-gate over the same network without gates, per round, median (min–max). Target: ε-gate +
monitors ≤ 2% of the step time.

| precision | ε-gate without monitors | ε-gate + monitors | target ≤ 2% |
|---|---|---|---|"""
    ]
    for precision, tag in (("float32", "f32"), ("bf16", "bf16")):
        quiet = overhead(results, f"ours-{tag}", f"ours-{tag}-eps-quiet")
        loud = overhead(results, f"ours-{tag}", f"ours-{tag}-eps")
        if loud is None:
            continue
        met = "met" if round(statistics.median(loud), 2) <= 2.0 else "**not met**"
        out.append(
            f"| {precision} | {fmt_spread(quiet, '%', 1, True) if quiet else '—'} | "
            f"{fmt_spread(loud, '%', 1, True)} | {met} |"
        )
    return "\n".join(out)


def skip_body(results):
    """BENCHMARKS.md "## Backward skip": step img/s per closed fraction, the skip on and
    off, their ratio and the ratio to the peer's best (which computes every block)."""
    v = results["variants"]
    out = [
        f"""
From the same interleaved rounds ({results["rounds"]} rounds, `make bench`,
{results["date"]}; {load_note(results)}): cifar10-eps-110's training step with a fraction
of its blocks closed for good (ε = 10⁹ on them: `benchmarks/trainstep.py` `close_blocks`,
a fixed pattern over the three groups), with the backward skip on (the default,
`train/skip.py`) and off (`--set backward_skip=false`). Both compute the same numbers
(tests/test_backward_skip.py). One block, the unit after the side head, never skips
(its input has three consumers, docs/PROFILE.md "Backward skip"). The peer computes every
block. Ratios are within each round, median (min–max). Targets: skip on / off ≥ 1.4× at
50% and ≥ 2.0× at 80%; overhead at 0% ≤ 2%.

| precision | closed | skip on img/s | skip off img/s | on / off | on / PyTorch's best | target |
|---|---|---|---|---|---|---|"""
    ]
    targets = {
        0: ("≤ 2% overhead", None),
        25: ("—", None),
        50: ("≥ 1.4×", 1.4),
        80: ("≥ 2.0×", 2.0),
    }
    for precision, tag in (("float32", "f32"), ("bf16", "bf16")):
        best = peer_best(results, precision)
        for pct in (0, *(round(100 * f) for f in SKIP_FRACTIONS)):
            on = f"ours-{tag}-eps" + (f"-c{pct}" if pct else "")
            off = on + "-noskip"
            if on not in v or off not in v:
                continue
            a, b = v[on]["img_s_runs"], v[off]["img_s_runs"]
            gain = per_round(a, b, lambda x, y: x / y)
            closed = v[on]["setup"].get("closed", 0)
            blocks = v[on]["setup"].get("blocks", 0)
            peer = (
                fmt_spread(per_round(a, v[best]["img_s_runs"], lambda x, y: x / y), "×")
                + f" ({best})"
                if best
                else "not run"
            )
            text, want = targets.get(pct, ("—", None))
            if pct == 0:
                cost = per_round(a, b, lambda x, y: 100 * (y / x - 1))
                met = "met" if round(statistics.median(cost), 2) <= 2.0 else "**not met**"
                verdict = f"overhead {fmt_spread(cost, '%', 1, True)}: {met}"
            elif want is None:
                verdict = text
            else:
                ok = round(statistics.median(gain), 3) >= want
                verdict = f"{text}: {'met' if ok else '**not met**'}"
            out.append(
                f"| {precision} | {pct}% ({closed} of {blocks}) | {fmt_spread(a, digits=1)} | "
                f"{fmt_spread(b, digits=1)} | {fmt_spread(gain, '×')} | {peer} | {verdict} |"
            )
    return "\n".join(out)


def pipeline_consumption(results):
    """(label, img/s) of the fastest of our models: what the data pipeline must feed."""
    ours = {k: r for k, r in results["variants"].items() if r["who"] == "ours"}
    label = max(ours, key=lambda k: ours[k]["img_s"])
    return label, ours[label]["img_s"]


def write(results):
    benchmd.write_section("## Training: ours vs PyTorch", training_body(results))
    benchmd.write_section("## ε-gate overhead", gate_body(results))
    if any("-noskip" in label for label in results["variants"]):
        benchmd.write_section("## Backward skip", skip_body(results))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=str(DEFAULT_PEER))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=6, help="steps per variant and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quiet-wait", type=float, default=300)
    ap.add_argument("--no-peer", action="store_true", help="ours only (no PyTorch)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument(
        "--no-skip-rows", action="store_true", help="leave out the backward skip's rows"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny nets, one round: a test")
    ap.add_argument("--write", action="store_true", help="with --smoke: write anyway")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--from-json", action="store_true", help="re-render the saved results")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.warmup = 1, 2, 1
        args.quiet_wait = 0
    if args.from_json:
        results = benchmd.load_results("peer")
    else:
        results = measure(args)
        benchmd.save_results("peer-smoke" if args.smoke else "peer", results)
    if not args.no_write and (args.write or not args.smoke):
        write(results)
        print(
            "wrote '## Training: ours vs PyTorch', '## ε-gate overhead' and "
            "'## Backward skip' of BENCHMARKS.md"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
