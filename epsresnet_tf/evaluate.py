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

import numpy as np

from epsresnet_tf import compress as C
from epsresnet_tf.data.batches import iter_images
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block, kind_of
from epsresnet_tf.naming import block_id, layer_prefix, parse_block_id, sort_block_ids

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
