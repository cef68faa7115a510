"""`epsresnet evaluate` (error, size, latency of a saved net) and `epsresnet ablate`
(remove blocks one at a time, error after each removal: the gates paper's Fig. 5, right).

Library API::

    error_rates(model, data, top5=False) -> {"top1_error", "top5_error"?, "images"}
    latency(model, input_shape, batch, repeats=20, warmup=3) -> seconds per image
    evaluate_model(model, data=None, batches=(1, 128), top5=False) -> dict
    block_contributions(model, data) -> {block id: mean |what the block adds|}
    removal_order(model, order, data=None, seed=0) -> [block ids]
    ablate(model, arch, build_options, order_ids, data, top5=False) -> rows
"""

import time
from pathlib import Path

import numpy as np

from epsresnet_tf import compress as C
from epsresnet_tf import jsonsafe
from epsresnet_tf.commands import JSON, add_command, data_dir, force, option
from epsresnet_tf.data import datasets
from epsresnet_tf.data.batches import iter_images
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block, kind_of
from epsresnet_tf.naming import block_id, layer_prefix, parse_block_id, sort_block_ids
from epsresnet_tf.outputs import load_net
from epsresnet_tf.runfolder import (
    MODEL,
    REDUCED_MODEL,
    atomic_write_text,
    find_run,
    read_run,
    run_data_dir,
)

ORDERS = ("greedy-k", "random", "by-response")


def _logits_fn(model):
    """Inference logits, traced once here for any batch size. `ablate` builds a new net per
    removal: a tf.function traced at its first call per net (and again at a short last
    batch) made TensorFlow warn about frequent retracing; a concrete function is not."""
    import tensorflow as tf

    x = model.inputs[0]
    spec = tf.TensorSpec((None, *x.shape[1:]), x.dtype)
    return tf.function(lambda x: C.logits_of(model(x, training=False))).get_concrete_function(spec)


def error_rates(model, data, top5=False):
    """Top-1 (and top-5) error over (images, labels) batches."""
    f = _logits_fn(model)
    wrong1 = wrong5 = n = 0
    for x, y in data:
        z = np.asarray(f(x), np.float32)
        y = np.asarray(y)
        wrong1 += int(np.sum(z.argmax(-1) != y))
        if top5:
            top = np.argsort(-z, axis=-1)[:, :5]
            wrong5 += int(np.sum(~np.any(top == y[:, None], axis=-1)))
        n += len(y)
    if not n:
        raise UserError("no images to evaluate on: check --data-dir and --max-batches")
    out = {"top1_error": wrong1 / n, "images": n}
    if top5:
        out["top5_error"] = wrong5 / n
    return out


def latency(model, input_shape, batch, repeats=20, warmup=3):
    """Median wall time per image of a compiled inference call at `batch` (random input,
    result fetched to the host so asynchronous devices are timed to completion)."""
    import tensorflow as tf

    f = _logits_fn(model)
    x = tf.random.normal((batch,) + tuple(input_shape), seed=0)
    for _ in range(warmup):
        np.asarray(f(x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.asarray(f(x))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / batch


def evaluate_model(model, data=None, batches=(1, 128), top5=False, repeats=20):
    stats = C.model_size(model)
    out = {"name": model.name, **stats}
    if data is not None:
        out.update(error_rates(model, data, top5))
    shape = tuple(model.inputs[0].shape[1:])
    out["latency_per_image_s"] = {str(b): latency(model, shape, b, repeats) for b in batches}
    return out


# --- removal curves --------------------------------------------------------------------


def _contribution_tensors(model):
    """{block id: (tensor the block adds to its shortcut, scale)}: the Add's residual input
    (for ε-nets that is S(F), after the gate); for merging gates (k) F with scale φ (g(k))."""
    gates = gate_by_block(model)
    out = {}
    for g, count in C.block_layout(model).items():
        for b in range(count):
            p = layer_prefix(g, b)
            names = {l.name: l for l in model.layers if l.name.startswith(p)}
            gate = gates.get(block_id(g, b))
            if gate is not None and kind_of(gate).merges:
                out[block_id(g, b)] = (gate.input[0], kind_of(gate).factor(gate))
            elif p + "add" in names:
                out[block_id(g, b)] = (names[p + "add"].input[0], 1.0)
    return out


def block_contributions(model, data):
    """Mean |contribution| of each block over the images of `data` (inference mode)."""
    import keras
    import tensorflow as tf

    tensors = _contribution_tensors(model)
    if not tensors:
        raise UserError(f"{model.name}: no residual blocks found to measure")
    ids = list(tensors)
    probe = keras.Model(model.inputs, [tensors[b][0] for b in ids])

    @tf.function(reduce_retracing=True)
    def means(x):
        return [
            tf.reduce_sum(
                tf.reduce_mean(tf.abs(tf.cast(o, tf.float32)), axis=list(range(1, len(o.shape))))
            )
            for o in probe(x, training=False)
        ]

    total, n = np.zeros(len(ids)), 0
    for x in iter_images(data):
        total += np.asarray([float(v) for v in means(tf.convert_to_tensor(x))])
        n += int(x.shape[0])
    return {b: float(total[i] / max(n, 1) * tensors[b][1]) for i, b in enumerate(ids)}


def removal_order(model, order, data=None, seed=0):
    """Blocks in the order they are removed. greedy-k: smallest g(k) first (Savarese et al.);
    random: a seeded permutation; by-response: smallest mean |contribution| first."""
    ids = sort_block_ids(block_id(g, i) for g, n in C.block_layout(model).items() for i in range(n))
    if order == "greedy-k":  # any gate kind with a learned scalar φ: smallest φ first
        gates = gate_by_block(model)
        factors = {b: kind_of(gates[b]).factor(gates[b]) for b in ids if b in gates}
        if len(factors) != len(ids) or None in factors.values():
            raise UserError(
                "--order greedy-k needs a k-gated net (gate k); use by-response or random"
            )
        return sorted(ids, key=lambda b: (factors[b], parse_block_id(b)))
    if order == "random":
        return [ids[i] for i in np.random.RandomState(seed).permutation(len(ids))]
    if order == "by-response":
        if data is None:
            raise UserError("--order by-response needs data to measure responses on")
        contrib = block_contributions(model, data)
        return sorted(ids, key=lambda b: (contrib.get(b, 0.0), parse_block_id(b)))
    raise UserError(f"unknown order {order!r}: choose {', '.join(ORDERS)}")


def ablate(model, arch, build_options, order_ids, data, top5=False, max_removals=None):
    """Error after removing the first 0, 1, 2, … blocks of `order_ids` (each removal rebuilds
    the reduced net; kept blocks keep their gates, so only the removals change anything)."""
    rows = []
    steps = len(order_ids) if max_removals is None else min(max_removals, len(order_ids))
    for i in range(steps + 1):
        removed = order_ids[:i]
        reduced, _ = C.reduce(model, arch, build_options, removed, gates="keep")
        row = {"removed": i, "block": order_ids[i - 1] if i else None}
        row.update(error_rates(reduced, data, top5))
        rows.append(row)
    return rows


# --- command line ----------------------------------------------------------------------


def _evaluate_cli(args):
    from epsresnet_tf.data.pipeline import eval_batches

    path = Path(args.model)
    if path.is_dir():
        path = path / (MODEL if (path / MODEL).exists() else REDUCED_MODEL)
    model = load_net(path)
    run_dir = find_run(path)
    dataset, mean, seed = args.dataset, "train", 0
    if run_dir is not None:
        run = read_run(run_dir)
        dataset, mean, seed = dataset or run.dataset, run.mean, run.seed
    if dataset is None:
        raise UserError(f"cannot tell the dataset of {path}: pass --dataset (e.g. cifar10)")
    info = datasets.get(dataset)
    data = eval_batches(
        dataset,
        info.eval_split,
        run_data_dir(args.data_dir, run_dir),
        args.batch_size,
        seed=seed,
        mean=mean,
        max_batches=args.max_batches,
    )
    batches = [int(b) for b in args.latency_batches.split(",") if b]
    result = evaluate_model(model, data, batches, top5=info.top5, repeats=args.repeats)
    result.update(model_path=str(path), dataset=dataset)
    if args.json:
        print(jsonsafe.dumps(result))
        return 0
    print(f"{path}: {dataset} {info.eval_split} ({result['images']} images)")
    print(
        f"  top-1 error {100 * result['top1_error']:.2f}%"
        + (f", top-5 error {100 * result['top5_error']:.2f}%" if "top5_error" in result else "")
    )
    print(
        f"  params {result['trainable_params']:,} trainable ({result['params']:,} with BN "
        f"statistics), MACs {result['macs']:,}, layers {result['layers']}, blocks {result['blocks']}"
    )
    for b, t in result["latency_per_image_s"].items():
        print(f"  latency at batch {b}: {1e3 * t:.3f} ms per image")
    return 0


def _ablate_cli(args):
    run = read_run(args.run_dir)
    out = Path(args.out) if args.out else run.folder.ablation / f"{args.order}.json"
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to replace it or --out another file")
    model = load_net(run.model_path)
    data = C.run_datasets(run, args.data_dir, ("test",), args.max_batches)["test"]
    order_ids = removal_order(model, args.order, data, args.seed)

    rows = ablate(
        model,
        run.arch,
        run.build_options,
        order_ids,
        data,
        top5=datasets.get(run.dataset).top5,
        max_removals=args.max_removals,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"run": str(run.root), "order": args.order, "seed": args.seed, "rows": rows}
    # One file: written beside the old one and renamed over it, so --force never leaves a
    # half-written or missing ablation behind; NaN/Inf as null (strict JSON).
    atomic_write_text(out, jsonsafe.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(f"{r['removed']:4d} {r['block'] or '-':>16s}  error {100 * r['top1_error']:.2f}%")
    print(f"wrote {out}")
    return 0


def register(subparsers):
    """Add the `evaluate` and `ablate` subcommands."""
    add_command(
        subparsers,
        "evaluate",
        help="error, parameters, MACs and latency of a saved net",
        description="Evaluate a .keras net (a run folder's model.keras or reduced/reduced.keras, "
        "or any path) on the dataset's evaluation split.",
        func=_evaluate_cli,
        options=[
            option("model", help=".keras file, or a run folder / reduced folder"),
            data_dir(
                "dataset root (default: the folder the run trained with, else "
                "$EPSRESNET_DATA or ./data)",
                from_run=True,
            ),
            option(
                "--dataset", default=None, help="dataset (default: the run's, if MODEL is in one)"
            ),
            option("--batch-size", type=int, default=128, help="evaluation batch size (128)"),
            option("--max-batches", type=int, default=None, help="evaluate on the first N batches"),
            option("--latency-batches", default="1,128", help="batch sizes to time (1,128)"),
            option("--repeats", type=int, default=20, help="timed calls per batch size (20)"),
            JSON,
        ],
    )
    add_command(
        subparsers,
        "ablate",
        help="remove blocks one at a time and record the error after each removal",
        description="Removal-robustness curve (Savarese et al. Fig. 5, right) of a trained run: "
        "writes RUN_DIR/ablation/ORDER.json, which `epsresnet report` plots.",
        func=_ablate_cli,
        options=[
            option("run_dir", help="run folder written by `epsresnet train`"),
            option(
                "--order",
                choices=ORDERS,
                default="by-response",
                help="greedy-k (smallest g(k) first; k-gated nets), random, or by-response "
                "(smallest mean |contribution| first)",
            ),
            data_dir(
                "dataset root (default: the folder the run trained with, else "
                "$EPSRESNET_DATA or ./data)",
                from_run=True,
            ),
            option("--seed", type=int, default=0, help="seed of the random order"),
            option("--max-batches", type=int, default=None, help="test on the first N batches"),
            option("--max-removals", type=int, default=None, help="stop after N removals"),
            option(
                "--out", default=None, help="output JSON (default: RUN_DIR/ablation/ORDER.json)"
            ),
            force("an existing output"),
        ],
    )
