"""Inference time of a full ε-ResNet against its certified reduced net; updates the
"## Inference: full vs reduced" section of BENCHMARKS.md.

The net: cifar-basic-ARCH with ε-gates; a fixed set of blocks (every other unit, and the
first unit of groups 1 and 2, about half) is closed by a huge ε, as training with a large ε
would; `compress` certifies and removes them. Weights do not change run time, so no training
is needed. Timed: compiled inference (`tf.function`, training=False) at batch 128 and 1,
median over repeats after warm-up, full and reduced alternating so drifts hit both.
Requirement (issue 5): reduced/full time <= 1.1 x reduced/full MACs.

    .venv/bin/python benchmarks/bench_inference.py [--arch cifar-basic-56] [--repeats 15]
"""

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.setrecursionlimit(30000)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchmd  # noqa: E402  (the machine line every section prints)
import tensorflow as tf  # noqa: E402

from epsresnet_tf import compress as C  # noqa: E402
from epsresnet_tf.gates import gate_by_block  # noqa: E402
from epsresnet_tf.models import build_model  # noqa: E402
from epsresnet_tf.naming import block_id, parse_block_id  # noqa: E402

SECTION = "## Inference: full vs reduced"


def closed_blocks(layout):
    out = []
    for g, n in layout.items():
        for b in range(n):
            if b % 2 == 1 or (b == 0 and g > 0):
                out.append(block_id(g, b))
    return out


def timed(fns, x, repeats, warmup=3):
    for f in fns:
        for _ in range(warmup):
            np.asarray(f(x))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            np.asarray(f(x))
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="cifar-basic-56")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batches", default="128,1")
    p.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    args = p.parse_args(argv)

    opts = dict(classes=10, input_shape=(32, 32, 3), gate="eps", epsilon=0.0)
    full = build_model(args.arch, **opts)
    closed = closed_blocks(C.block_layout(full))
    gates = gate_by_block(full)
    for bid in closed:
        gates[bid].epsilon.assign(1e9)
    x = np.random.RandomState(0).randn(256, 32, 32, 3).astype("float32")
    data = [x[:128], x[128:]]
    cert = C.certify(full, {"test": data}, batch_size=128)
    assert cert.closed == sorted(closed, key=parse_block_id), "certificate disagrees with the setup"
    reduced, info = C.reduce(full, args.arch, opts, cert.closed, certificate=cert)
    eq = C.check_equivalence(full, reduced, data)
    # the full net as deployed: gates kept (its open ones are T = 1), side head absent
    s_full, s_red = C.model_size(full), C.model_size(reduced)
    macs_ratio = s_red["macs"] / s_full["macs"]
    f_full = tf.function(lambda t: full(t, training=False), jit_compile=False)
    f_red = tf.function(lambda t: reduced(t, training=False), jit_compile=False)
    rows = []
    for b in [int(v) for v in args.batches.split(",")]:
        xb = tf.constant(np.resize(x, (b, 32, 32, 3)))
        t_full, t_red = timed([f_full, f_red], xb, args.repeats)
        rows.append((b, t_full / b * 1e3, t_red / b * 1e3, t_red / t_full))
    device = (
        "GPU "
        + tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
            "device_name", ""
        )
        if tf.config.list_physical_devices("GPU")
        else benchmd.machine_line()
    )
    lines = [
        SECTION,
        "",
        f"Measured by `make bench-inference` (`benchmarks/bench_inference.py --arch {args.arch}`) on "
        f"{datetime.date.today()}: {device}; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}.",
        "",
        f"{args.arch} with ε-gates; {len(cert.closed)} of {s_full['blocks']} blocks closed "
        f"(every second unit and the first unit of groups 1–2, so two pool+pad transitions "
        f"stay), certified and removed by `compress`; the reduced net is a plain pre-activation "
        f"ResNet (gates: {info['reduced_gates']}), blocks per group {info['blocks_per_group_before']} "
        f"→ {info['blocks_per_group_after']}. Equivalence on 256 images: max |logit diff| "
        f"{eq['max_abs_logit_diff']:.2g}. Compiled inference (`tf.function`, training=False), "
        f"median of {args.repeats} alternating calls after 3 warm-up calls.",
        "",
        "| | full | reduced | reduced / full |",
        "|---|---|---|---|",
        f"| MACs per image | {s_full['macs']:,} | {s_red['macs']:,} | {macs_ratio:.3f} |",
        f"| trainable parameters | {s_full['trainable_params']:,} | {s_red['trainable_params']:,} | "
        f"{s_red['trainable_params'] / s_full['trainable_params']:.3f} |",
    ]
    verdicts = []
    for b, tf_ms, tr_ms, ratio in rows:
        lines.append(
            f"| time per image, batch {b} | {tf_ms:.3f} ms | {tr_ms:.3f} ms | {ratio:.3f} |"
        )
        verdicts.append(
            f"batch {b}: {ratio:.3f} {'≤' if ratio <= 1.1 * macs_ratio else '>'} "
            f"1.1 × {macs_ratio:.3f} = {1.1 * macs_ratio:.3f}"
        )
    lines += [
        "",
        "Requirement reduced/full time ≤ 1.1 × reduced/full MACs: " + "; ".join(verdicts) + ".",
        "The full net is the trained ε-net as it runs: its gates' elementwise ops and "
        "reductions cost time that MACs do not count, so the time ratio can fall below the "
        "MAC ratio. At batch 1 fixed per-layer overheads dominate on CPU.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        old = path.read_text() if path.exists() else "# Benchmarks\n"
        pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
        new = (
            pattern.sub(lambda m: text.rstrip() + "\n", old)
            if SECTION in old
            else old.rstrip() + "\n\n" + text
        )
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
