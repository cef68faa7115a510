"""Certified compression (docs/semantics.md): which blocks provably contribute nothing, the reduced
standard ResNet without them, the equivalence check, the exports and the certificate.

Library API::

    certify(model, datasets, scope=None, batch_size=None) -> Certificate
        per-block verdicts "closed" / "open" / "mixed" from per-image gate values
    ema_removable(model_or_emas, threshold=EMA_THRESHOLD) -> [block ids]
        the authors' rule: the moving average of "discarded", printed with 5 significant
        digits as their log did, reads 1 (>= 0.999995)
    printed_as_authors(value) -> the monitor value as tensorpack 0.2.0's log printed it
    disagreements(certificate, ema_ids) -> {"ema_only": [...], "certificate_only": [...]}
    reduce(model, arch, build_options, removable, gates="auto", certificate=None)
        -> (reduced keras.Model, info dict)
    check_equivalence(full, reduced, dataset, tolerance=1e-5, device="cpu") -> dict
    model_size(model) -> params, parameter bytes, conv layers, layers, blocks, MACs
    compress_model(...) / compress_run(run_dir, ...)  everything above + exports

Why per-image values certify both scopes: with L fixed, T = relu(1 - L relu(1 - L s)) is
non-decreasing in s, and the batch-scope s is the maximum of the per-image s (inference
BatchNorm makes each image's residual independent of its batch). So a block's batch T is
the maximum of its images' T: T = 0 on every batch of *any* composition and size exactly
when T = 0 for every image — the batch-scope and sample-scope certificates coincide, and
they hold at batch 1 as well as at the run's batch size. "open" is weaker: in batch scope
it is checked at the given batch size and order only, since one open image opens its
whole batch.

The reduced net. A removed ε-block contributed T·F = 0 and a removed k-block g(k)·F = 0,
so dropping it changes no activation. Kept blocks follow `gates`:
  "auto" (default): a standard (ungated) pre-activation ResNet where that is exact on the
      certified data — every kept ε-gate "open" there (T = 1), every kept k-gate folded into
      the unit's last conv (g(k)·conv(x) = conv_{g(k)·W}(x)); otherwise the gates stay.
  "keep": the kept blocks keep their gates (exact on every batch, also ones never seen).
  "none": always the standard ResNet; refused where that is not exact on the data.
  "plain": always the standard ResNet, also where not exact (kept ε-gates taken as T = 1):
      the authors' reduced net, the default of the EMA rule. k-gates fold; where one cannot
      fold (shared kernel), the k-gates stay.

`compress_model` builds both reduced nets — the certified one and the authors' (EMA rule) —
and reports the test error of each and the blocks only one rule removes.
"""
import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np

from epsresnet_tf.blocks import block_id
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import (CERTIFICATE, REDUCED_MODEL, SAVED_MODEL, load_model,
                                    read_history, read_run)

#: Tolerance (docs/semantics.md) for the equivalence check on CPU.
TOLERANCE = 1e-5
#: The authors' rule (docs/semantics.md): a block goes when its is_discarded moving average
#: (decay 0.95), as their training log prints it, reads 1. tensorpack 0.2.0 prints monitor
#: scalars with 5 significant digits ('{:.5g}'), so a value in [0, 1] reads 1 exactly when
#: it rounds up from 0.99999, i.e. when it is >= 1 - 0.5e-5 = 0.999995. The value is a
#: float32: no float32 lies between the double 0.999995 and the decimal one (the neighbours
#: are 0.99999493… and 0.99999505…), so `ema >= EMA_THRESHOLD` and "prints as 1" agree on
#: every float32 (tests/test_compress.py checks this).
EMA_DIGITS = 5
EMA_THRESHOLD = 1 - 0.5 * 10 ** -EMA_DIGITS      # 0.999995
#: Gates of the kept blocks: "auto", "keep", "none" (see the module docstring) and "plain":
#: always the standard ResNet, exact or not — the authors' reduced net (their EMA rule).
GATE_POLICIES = ("auto", "keep", "none", "plain")

_BLOCK = re.compile(r"^group(\d+)_block(\d+)_(.*)$")
_TRANSITION = re.compile(r"^group(\d+)_transition_(.*)$")
_ID = re.compile(r"^group(\d+)/block(\d+)$")


def parse_block_id(bid):
    m = _ID.match(bid)
    if not m:
        raise UserError(f"bad block id {bid!r}: use group<g>/block<b>, e.g. group1/block0")
    return int(m.group(1)), int(m.group(2))


def _sort_ids(ids):
    return sorted(ids, key=parse_block_id)


# --- model structure -------------------------------------------------------------------

def logits_of(outputs):
    """The prediction logits of a model output (a dict when the side head is present)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def block_layout(model):
    """{group: number of units} from the `group{g}_block{b}_…` layer names."""
    seen = {}
    for layer in model.layers:
        m = _BLOCK.match(layer.name)
        if m:
            g, b = int(m.group(1)), int(m.group(2))
            seen[g] = max(seen.get(g, 0), b + 1)
    return seen


def _gate_by_block(model):
    from epsresnet_tf.layers import gate_layers
    out = {}
    for layer in gate_layers(model):
        m = _BLOCK.match(layer.name)
        if m:
            out[block_id(int(m.group(1)), int(m.group(2)))] = layer
    return out


def _value(v):
    return float(np.asarray(v.numpy() if hasattr(v, "numpy") else v))


# --- the certificate -------------------------------------------------------------------

@dataclasses.dataclass
class BlockVerdict:
    block: str
    kind: str                 # "eps" or "k"
    verdict: str              # "closed" (provably contributes 0), "open" or "mixed"
    epsilon: float = None
    max_response: float = None     # max |F| over every certified image (eps)
    images_open: int = 0           # images whose own T > 0 (eps)
    batches_open: int = 0          # batches (at batch_size) with T > 0 (eps, batch scope)
    batches_partly_open: int = 0   # batches with 0 < T < 1, or T = 1 but not on all batches
    k: float = None
    g: float = None
    ema: float = None

    def as_dict(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class Certificate:
    scope: str
    batch_size: int
    images: dict               # split -> images certified
    batches: dict              # split -> batches
    blocks: dict               # id -> BlockVerdict

    @property
    def closed(self):
        return _sort_ids(b for b, v in self.blocks.items() if v.verdict == "closed")

    def as_dict(self):
        return {"scope": self.scope, "batch_size": self.batch_size, "images": self.images,
                "batches": self.batches,
                "blocks": {b: self.blocks[b].as_dict() for b in _sort_ids(self.blocks)}}


def _iter_batches(data):
    """Images of each batch; `data` yields images or (images, labels)."""
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        yield np.asarray(x, np.float32) if isinstance(x, (np.ndarray, list)) else x


def gate_responses(model, data):
    """Per-image max |F| at each ε-gate's input: ({block id: float32 array (images,)},
    [batch lengths]). One inference pass over `data` (batches of images or (images, labels))."""
    import keras
    import tensorflow as tf
    from epsresnet_tf.layers import EpsilonGate

    gates = {b: l for b, l in _gate_by_block(model).items() if isinstance(l, EpsilonGate)}
    if not gates:
        return {}, []
    ids = list(gates)
    probe = keras.Model(model.inputs, [gates[b].input for b in ids])

    @tf.function(reduce_retracing=True)
    def maxima(x):
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [tf.reduce_max(tf.abs(tf.cast(o, tf.float32)), axis=list(range(1, len(o.shape))))
                for o in outs]

    per = {b: [] for b in ids}
    sizes = []
    for x in _iter_batches(data):
        values = maxima(tf.convert_to_tensor(x))
        sizes.append(int(values[0].shape[0]))
        for b, v in zip(ids, values):
            per[b].append(v.numpy())
    return {b: np.concatenate(v) if v else np.zeros(0, np.float32) for b, v in per.items()}, sizes


def per_image_gate(layer, maxima):
    """T of each image given its max |F|, with the layer's own formula: a sample-scope gate on
    an (N, 1) tensor whose only entry is max |F| has s = relu(max |F| - ε), as on F itself."""
    from epsresnet_tf.layers import EpsilonGate
    probe = EpsilonGate(_value(layer.epsilon), scope="sample", sharpness=layer.sharpness)
    probe.build((None, 1))
    probe.epsilon.assign(layer.epsilon)   # bit-identical ε, not a float64 round trip
    import tensorflow as tf
    t = probe.gate(tf.convert_to_tensor(np.asarray(maxima, np.float32)[:, None]))
    return np.asarray(t).reshape(-1)


def batch_gate(per_image, sizes):
    """Batch-scope T of consecutive batches of the given sizes: the maximum of per-image T
    (T is non-decreasing in s and the batch s is the max of the per-image s)."""
    out, start = [], 0
    for n in sizes:
        out.append(float(per_image[start:start + n].max()) if n else 0.0)
        start += n
    return np.asarray(out, np.float32)


def certify(model, datasets, scope=None, batch_size=None):
    """Per-block verdicts for every gate of `model`.

    datasets: {split name: iterable of batches} in the order the run would see them (the
    run's batch size: batch-scope "open" depends on the batching; "closed" does not).
    scope: "batch" or "sample" (default: the gates' own). k-gates need no data: closed
    exactly when g(k) = relu(k) = 0.
    """
    from epsresnet_tf.layers import EpsilonGate

    gates = _gate_by_block(model)
    eps_scopes = {l.scope for l in gates.values() if isinstance(l, EpsilonGate)}
    scope = scope or (eps_scopes.pop() if len(eps_scopes) == 1 else "batch")
    if scope not in ("batch", "sample"):
        raise UserError(f"scope must be 'batch' or 'sample', not {scope!r}")
    verdicts = {}
    images, batches = {}, {}
    maxima = {b: [] for b, l in gates.items() if isinstance(l, EpsilonGate)}
    batch_ts = {b: [] for b in maxima}
    image_ts = {b: [] for b in maxima}
    if maxima:
        for split, data in datasets.items():
            resp, sizes = gate_responses(model, data)
            images[split], batches[split] = int(sum(sizes)), len(sizes)
            for b in maxima:
                t = per_image_gate(gates[b], resp[b])
                maxima[b].append(resp[b])
                image_ts[b].append(t)
                batch_ts[b].append(batch_gate(t, sizes) if scope == "batch" else t)
    for b, layer in gates.items():
        ema = _value(layer.discarded_ema)
        if isinstance(layer, EpsilonGate):
            m = np.concatenate(maxima[b]) if maxima[b] else np.zeros(0, np.float32)
            ti = np.concatenate(image_ts[b]) if image_ts[b] else np.zeros(0, np.float32)
            tb = np.concatenate(batch_ts[b]) if batch_ts[b] else np.zeros(0, np.float32)
            if not len(ti):
                raise UserError("no images to certify ε-gates on: give a non-empty dataset")
            verdict = ("closed" if np.all(ti == 0) else
                       "open" if np.all(tb == 1) else "mixed")
            verdicts[b] = BlockVerdict(
                b, "eps", verdict, epsilon=_value(layer.epsilon), max_response=float(m.max()),
                images_open=int(np.sum(ti > 0)), batches_open=int(np.sum(tb > 0)),
                batches_partly_open=int(np.sum((tb > 0) & (tb < 1))), ema=ema)
        else:
            k = _value(layer.k)
            g = max(k, 0.0)
            verdicts[b] = BlockVerdict(b, "k", "closed" if g == 0 else "open", k=k, g=g, ema=ema)
    return Certificate(scope, int(batch_size) if batch_size else None, images, batches, verdicts)


def printed_as_authors(value, digits=EMA_DIGITS):
    """A monitor value as tensorpack 0.2.0's text log printed it ('{:.5g}'): the authors'
    compressModel.py took a block whose printed is_discarded parses to 1.0."""
    return "{:.{}g}".format(float(value), digits)


def ema_removable(source, threshold=EMA_THRESHOLD):
    """The authors' rule (docs/semantics.md): blocks whose moving average of "discarded"
    reads 1 in their log, i.e. >= EMA_THRESHOLD (0.999995).
    `source`: a model (its gates' `discarded_ema`) or {block id: ema} (e.g. a history row's
    per-block "discarded")."""
    if hasattr(source, "layers"):
        emas = {b: _value(l.discarded_ema) for b, l in _gate_by_block(source).items()}
    else:
        emas = {b: (v["discarded"] if isinstance(v, dict) else float(v)) for b, v in source.items()}
    return _sort_ids(b for b, v in emas.items() if v >= threshold)


def disagreements(certificate, ema_ids):
    """Where the moving-average rule and the certificate differ: "ema_only" blocks would be
    removed by the EMA rule but are not provably closed (removing them may change
    predictions); "certificate_only" blocks are provably closed but the EMA lags."""
    closed, ema = set(certificate.closed), set(ema_ids)
    return {"ema_only": _sort_ids(ema - closed), "certificate_only": _sort_ids(closed - ema)}


# --- the reduced network ---------------------------------------------------------------

def _renumbering(layout, removed):
    """{(g, old b): new b} for kept units, counts per group and groups whose first went."""
    mapping, counts, first_removed = {}, [], []
    for g in range(max(layout) + 1 if layout else 0):
        kept = [b for b in range(layout.get(g, 0)) if (g, b) not in removed]
        counts.append(len(kept))
        if (g, 0) in removed:
            first_removed.append(g)
        for new, old in enumerate(kept):
            mapping[(g, old)] = new
    return mapping, counts, tuple(first_removed)


def _source_name(name, inverse):
    """Layer name in the trained net for a layer of the reduced net."""
    m = _BLOCK.match(name)
    if m:
        g, b = int(m.group(1)), int(m.group(2))
        return f"group{g}_block{inverse[(g, b)]}_{m.group(3)}"
    m = _TRANSITION.match(name)
    if m:  # the old first unit's shortcut path (docs/semantics.md)
        return f"group{m.group(1)}_block0_{m.group(2)}"
    return name


def _last_conv(gate_layer):
    """The layer producing a k-gate's residual input (full pre-activation: the last conv)."""
    node = gate_layer._inbound_nodes[0]
    tensor = node.input_tensors[0]
    return tensor._keras_history.operation


def _foldable(model, bid):
    """A k-gate folds into its unit's last conv when that conv is the unit's own (a shared
    stage kernel serves other units with other k) and has no bias."""
    import keras
    gate = _gate_by_block(model)[bid]
    if getattr(gate, "mode", "residual") != "residual":
        return None
    conv = _last_conv(gate)
    if isinstance(conv, keras.layers.Conv2D) and not conv.use_bias and len(conv._inbound_nodes) == 1:
        return conv
    return None


def _decide_gates(model, kept, gates, certificate):
    """Which gate kind the reduced net gets ("none", "eps" or "k") and k-gates to fold."""
    from epsresnet_tf.layers import EpsilonGate, ResidualGate
    by_block = _gate_by_block(model)
    kept_gates = {b: by_block[b] for b in kept if b in by_block}
    if not kept_gates:
        return "none", {}, "no gates remain"
    kind = "eps" if any(isinstance(l, EpsilonGate) for l in kept_gates.values()) else "k"
    if kind == "eps":
        if certificate is None:
            exact, why = False, "no certificate: kept ε-gates cannot be shown open"
        else:
            not_open = [b for b in kept_gates if certificate.blocks[b].verdict != "open"]
            exact = not not_open
            why = ("every kept ε-gate is open (T = 1) on every certified batch" if exact else
                   f"kept ε-gates not open on every certified batch: {', '.join(not_open[:5])}")
        folds = {}
    else:
        folds = {b: _foldable(model, b) for b in kept_gates}
        unfoldable = [b for b, c in folds.items() if c is None]
        exact = not unfoldable
        why = ("every kept g(k) folds into its unit's last conv" if exact else
               f"g(k) cannot fold into a shared or non-conv last layer: {', '.join(unfoldable[:5])}")
        folds = {b: (by_block[b], c) for b, c in folds.items() if c is not None}
    if gates == "keep":
        return kind, {}, "gates kept on request (--gates keep)"
    if gates == "plain":     # the authors' reduced net: a standard ResNet whatever the data say
        if kind == "k" and not exact:
            return kind, {}, f"k-gates kept: {why}"
        return "none", folds, ("standard ResNet (the authors' reduced net): " +
                               (why if exact else f"not exact, {why}"))
    if gates == "none" and not exact:
        raise UserError(f"--gates none is not exact here ({why}); use --gates auto or keep")
    if exact:
        return "none", folds, why
    return kind, {}, why


def reduce(model, arch, build_options, removable, gates="auto", certificate=None):
    """The reduced network without the `removable` blocks (ids `group{g}/block{b}`), weights
    copied by layer name. Returns (keras.Model, info) where info has the renumbering, the
    per-group counts, the groups whose first unit went and the gate decision.

    build_options: the keyword arguments the trained net was built with (classes,
    input_shape, gate, epsilon, gate_scope, share, weight_decay, order, …); the side head
    is never part of the reduced net.
    """
    import keras
    from epsresnet_tf.models import build_model

    if gates not in GATE_POLICIES:
        raise UserError(f"gates must be one of {', '.join(GATE_POLICIES)}, not {gates!r}")
    layout = block_layout(model)
    removed = {parse_block_id(b) for b in removable}
    unknown = [b for b in removed if b[0] not in layout or b[1] >= layout[b[0]]]
    if unknown:
        raise UserError(f"blocks not in the model: {', '.join(block_id(*b) for b in unknown)}")
    mapping, counts, first_removed = _renumbering(layout, removed)
    kept = [block_id(g, b) for (g, b) in sorted(mapping)]
    kind, folds, why = _decide_gates(model, kept, gates, certificate)

    options = dict(build_options)
    options.update(side_head=False, gate=kind)
    # Same precision as the trained net, so the check compares like with like.
    policy = keras.config.dtype_policy()
    first = next(l for l in model.layers if l.weights)   # the stem: the net's compute policy
    try:
        keras.config.set_dtype_policy(first.dtype_policy.name)
        reduced = build_model(arch, blocks_per_group=counts, first_removed=first_removed, **options)
    finally:
        keras.config.set_dtype_policy(policy)

    inverse = {(g, new): old for (g, old), new in mapping.items()}
    source = {l.name: l for l in model.layers}
    folded = {conv.name: gate for gate, conv in folds.values()}
    copied = set()
    for layer in reduced.layers:
        if not layer.weights:
            continue
        name = _source_name(layer.name, inverse)
        if name not in source:
            raise UserError(f"reduced layer {layer.name} has no counterpart {name} in the "
                            "trained net: were the build options the ones it was trained with?")
        src = source[name]
        weights = src.get_weights()
        if name in folded:  # g(k)·conv_W(x) = conv_{g(k)·W}(x): the gate folds into the kernel
            g = max(_value(folded[name].k), 0.0)
            weights = [w * np.asarray(g, w.dtype) for w in weights]
        target = [w.shape for w in layer.weights]
        if [tuple(w.shape) for w in weights] != [tuple(s) for s in target]:
            raise UserError(f"{layer.name}: weight shapes {[w.shape for w in weights]} differ "
                            f"from {name}'s {target}: build options do not match the trained net")
        layer.set_weights(weights)
        copied.add(name)
    # Every trained weight is either copied or belongs to a removed block, a gate the
    # plain reduced net drops (open ε-gates: T = 1; folded k-gates) or the side head.
    removed_prefixes = tuple(f"group{g}_block{b}_" for g, b in removed) + tuple(
        f"group{g}_shared_" for g, n in enumerate(counts) if n == 0)   # no unit left to use it
    folded_gates = {l.name for l in _gate_by_block(model).values()} if kind == "none" else set()
    missing = [l.name for l in model.layers if l.weights and l.name not in copied
               and not l.name.startswith(removed_prefixes) and not l.name.startswith("side_head")
               and l.name not in folded_gates]
    if missing:
        raise UserError(f"weights of {', '.join(missing[:5])} were not carried over: the "
                        "reduced layout does not match the trained net")
    info = {
        "removed": _sort_ids(block_id(*b) for b in removed),
        "renumbered": {block_id(g, old): block_id(g, new) for (g, old), new in sorted(mapping.items())},
        "blocks_per_group_before": [layout.get(g, 0) for g in range(len(counts))],
        "blocks_per_group_after": counts,
        "first_removed": list(first_removed),
        "reduced_gates": kind,
        "gate_decision": why,
        "folded_k": _sort_ids(folds),
    }
    return reduced, info


# --- sizes and the check ---------------------------------------------------------------

def model_size(model):
    """Sizes of the prediction path (the side head excluded): the paper's trainable
    parameters, all parameters, their float32 bytes, conv kernels, layers (weighted layers
    on the main path: convs at every use except shortcuts, + dense; 6n+2 for CIFAR basic),
    blocks and MACs per image."""
    import keras
    from epsresnet_tf.models.describe import _calls, model_stats

    stats = model_stats(model)
    side = [l for l in model.layers if l.name.startswith("side_head")]
    side_params = sum(int(np.prod(w.shape)) for l in side for w in l.weights)
    side_trainable = sum(int(np.prod(w.shape)) for l in side for w in l.trainable_weights)
    side_macs = sum(int(np.prod(l.kernel.shape)) for l in side if isinstance(l, keras.layers.Dense))
    layers = 0
    for layer in model.layers:
        if layer.name.startswith("side_head") or "shortcut" in layer.name:
            continue
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            layers += sum(1 for _ in _calls(layer, model))
    params = stats["params"] - side_params
    trainable = stats["trainable_params"] - side_trainable
    return {"params": params, "trainable_params": trainable,
            "param_bytes": 4 * params, "trainable_bytes": 4 * trainable,
            "conv_layers": stats["conv_layers"], "layers": layers, "blocks": stats["blocks"],
            "macs": stats["macs"] - side_macs}


def check_equivalence(full, reduced, data, tolerance=TOLERANCE, device="cpu"):
    """Run both nets on the same batches (inference mode) and compare logits."""
    import tensorflow as tf

    def run():
        worst, images, same, batches, wrong = 0.0, 0, 0, 0, [0, 0]
        labelled = True
        f_full = tf.function(lambda x: logits_of(full(x, training=False)), reduce_retracing=True)
        f_red = tf.function(lambda x: logits_of(reduced(x, training=False)), reduce_retracing=True)
        for item in data:
            x = next(_iter_batches([item]))
            x = tf.convert_to_tensor(x)
            a = np.asarray(tf.cast(f_full(x), tf.float32))
            b = np.asarray(tf.cast(f_red(x), tf.float32))
            worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
            same += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            if isinstance(item, (tuple, list)) and len(item) > 1:
                y = np.asarray(item[1])
                wrong[0] += int(np.sum(a.argmax(-1) != y))
                wrong[1] += int(np.sum(b.argmax(-1) != y))
            else:
                labelled = False
            images += len(a)
            batches += 1
        return worst, images, same, batches, (wrong if labelled and images else None)

    if device == "cpu":
        with tf.device("/CPU:0"):
            worst, images, same, batches, wrong = run()
    else:
        worst, images, same, batches, wrong = run()
    out = {"max_abs_logit_diff": worst, "tolerance": tolerance, "passed": bool(worst <= tolerance),
           "images": images, "batches": batches, "same_top1": same, "device": device}
    if wrong is not None:   # top-1 errors of both nets on the check's (test) images
        out.update(error_full=wrong[0] / images, error_reduced=wrong[1] / images)
    return out


# --- everything, with exports ----------------------------------------------------------

SCOPE_NOTE = {
    "batch": ("Batch scope: a closed block has T = 0 for every certified image, hence on every "
              "batch of any size or order drawn from these images. A kept gate certified "
              "'open' was open on every batch at this batch size and order; on other batches "
              "(another size, batch 1, unseen images) it could still close, and a gated net "
              "would then differ from the plain reduced net."),
    "sample": ("Sample scope: a closed block has T = 0 for every certified image; a kept gate "
               "certified 'open' was open for every certified image, and may close on unseen "
               "images."),
}


#: What each rule's net is called in certificate.json and the printed summary.
RULES = {"certificate": "certified", "ema": "authors' EMA rule"}


def compress_model(model, arch, build_options, *, certify_data, check_data, out_dir,
                   scope=None, batch_size=None, rule="certificate", ema=None,
                   ema_threshold=EMA_THRESHOLD, gates=None, tolerance=TOLERANCE,
                   check_device="cpu", force=False, export=True, extra=None):
    """Certify, reduce, check, export. Writes `out_dir/{reduced.keras, saved_model/,
    certificate.json}` and returns the certificate dict. rule: "certificate" (default) or
    "ema" (the authors' moving-average rule; the check then says whether it was safe).

    Both rules' reduced nets are built and run on `check_data` (the test split): the
    document's "rules" holds each one's removals, layout and test error (labelled data),
    "disagreements" the blocks only one rule removes. The exported net is `rule`'s, with
    `gates` as its policy (None: "auto" for the certificate, "plain" — the authors' standard
    ResNet — for the EMA rule); the other rule's net gets that default."""
    out_dir = Path(out_dir)
    if rule not in RULES:
        raise UserError(f"rule must be 'certificate' or 'ema', not {rule!r}")
    _prepare_out(out_dir, force)
    cert = certify(model, certify_data, scope=scope, batch_size=batch_size)
    ema_ids = ema_removable(model if ema is None else ema, ema_threshold)
    removable = {"certificate": cert.closed, "ema": ema_ids}
    policy = {"certificate": "auto", "ema": "plain"}
    if gates is not None:
        policy[rule] = gates
    nets, infos, checks = {}, {}, {}
    for name in (rule,) + tuple(r for r in RULES if r != rule):   # the exported one first
        nets[name], infos[name] = reduce(model, arch, build_options, removable[name],
                                         gates=policy[name], certificate=cert)
        checks[name] = check_equivalence(model, nets[name], check_data, tolerance, check_device)
    reduced, info, equivalence = nets[rule], infos[rule], checks[rule]
    full_inference, _ = reduce(model, arch, build_options, [], gates="keep", certificate=cert)
    before, after = model_size(full_inference), model_size(reduced)
    dis = disagreements(cert, ema_ids)
    rules = {}
    for name in RULES:
        i, c = infos[name], checks[name]
        rules[name] = {
            "net": RULES[name], "gates": policy[name], "removed": i["removed"],
            "removed_count": len(i["removed"]),
            "blocks_per_group_after": i["blocks_per_group_after"],
            "first_removed_groups": i["first_removed"], "reduced_gates": i["reduced_gates"],
            "gate_decision": i["gate_decision"],
            "test_error": c.get("error_reduced"),           # None on unlabelled check data
            "test_error_full": c.get("error_full"),
            "max_abs_logit_diff": c["max_abs_logit_diff"], "same_top1": c["same_top1"],
            "identical_predictions": c["passed"], "test_images": c["images"]}
    doc = {
        "arch": arch,
        "rule": rule,
        "scope": cert.scope,
        "certified_on": {"images": cert.images, "batches": cert.batches,
                         "batch_size": cert.batch_size},
        "removed": info["removed"],
        "removed_count": len(info["removed"]),
        "blocks_before": before["blocks"],
        "blocks_after": after["blocks"],
        "blocks_per_group_before": info["blocks_per_group_before"],
        "blocks_per_group_after": info["blocks_per_group_after"],
        "first_removed_groups": info["first_removed"],
        "renumbered": info["renumbered"],
        "reduced_gates": info["reduced_gates"],
        "gate_decision": info["gate_decision"],
        "folded_k": info["folded_k"],
        "before": before,
        "after": after,
        "compression": {k: (before[k] / after[k] if after[k] else None)
                        for k in ("params", "layers", "macs", "blocks")},
        "equivalence": equivalence,
        "rules": rules,
        "disagreements": dis,
        "ema_rule": {"threshold": ema_threshold, "digits": EMA_DIGITS, "removable": ema_ids,
                     "disagreements": dis},
        "note": SCOPE_NOTE[cert.scope],
        "blocks": cert.as_dict()["blocks"],
    }
    if extra:
        doc.update(extra)
    if export:
        reduced.save(out_dir / REDUCED_MODEL)
        reduced.export(str(out_dir / SAVED_MODEL), verbose=False)
    (out_dir / CERTIFICATE).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _prepare_out(out_dir, force):
    names = (REDUCED_MODEL, SAVED_MODEL, CERTIFICATE)
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not force:
        raise UserError(f"{out_dir} already holds {', '.join(existing)}; pass --force to "
                        "replace them or --out another folder")
    for n in existing:
        p = out_dir / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


# --- a run's data (the run folder's layout: epsresnet_tf.runfolder) -------------------

def run_datasets(run, data_dir, splits=("train", "test"), max_batches=None, batch_size=None):
    """Evaluation-order batches (no augmentation) of the run's dataset, per split name
    ("train" and "test" map to the dataset's own split names)."""
    from epsresnet_tf.data.pipeline import dataset_info, make_pipeline
    info = dataset_info(run.dataset)
    names = {"train": info.train_split, "test": info.eval_split}
    out = {}
    for split in splits:
        pipe = make_pipeline(run.dataset, names.get(split, split), data_dir,
                             batch_size or run.batch_size, train=False, seed=run.seed,
                             mean=run.mean)
        out[split] = _NormalisedBatches(pipe, max_batches)
    return out


class _NormalisedBatches:
    """Re-iterable (images, labels) numpy batches of a pipeline's epoch 0."""

    def __init__(self, pipe, max_batches=None):
        self.pipe, self.max_batches = pipe, max_batches

    def __iter__(self):
        for i, (x, y) in enumerate(self.pipe.batches(0)):
            if self.max_batches is not None and i >= self.max_batches:
                return
            yield self.pipe.normalise_np(x), np.asarray(y, np.int32)


def load_epoch(run, epoch):
    """(net, checkpoint state) at the end of a finished `epoch`: the run's net built from
    config.json as training built it, every variable (weights, BatchNorm statistics, ε,
    the gates' moving averages) from `ckpt/epoch-<epoch>.npz`. UserError naming the kept
    epochs and the setting to use when that checkpoint is gone."""
    import keras
    from epsresnet_tf.models import build_model

    folder = run.folder
    path = folder.checkpoint_path(epoch)
    if not path.is_file():
        kept = folder.kept_epochs()
        raise UserError(f"no checkpoint of epoch {epoch} in {folder.ckpt} (kept: "
                        f"{', '.join(map(str, kept)) or 'none'}); train with "
                        f"\"keep_checkpoints_at\": [{epoch}] (or keep_checkpoints_every) in the "
                        "config to keep it, or compress a kept epoch")
    try:
        arrays, state = folder.load(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is unreadable ({err}): compress another kept epoch") from err
    cfg = run.config
    policy = keras.config.dtype_policy()
    try:   # the run's precision, as training set it
        keras.config.set_dtype_policy("mixed_float16" if cfg.get("mixed_precision") else "float32")
        net = build_model(run.arch, side_head=cfg.get("side_head", True), **run.build_options)
    finally:
        keras.config.set_dtype_policy(policy)
    variables = net.variables   # the checkpoint holds these first, then the optimizer's
    if len(arrays) < len(variables) or any(
            tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        raise UserError(f"{path} does not match the net config.json describes: was the run "
                        "folder's config.json edited?")
    for v, a in zip(variables, arrays):
        v.assign(a)
    if state.get("epoch") != epoch:
        raise UserError(f"{path} holds epoch {state.get('epoch')}, not {epoch}")
    return net, state


def compress_run(run_dir, data_dir="data", out=None, *, rule="certificate", gates=None,
                 epoch=None, ema_from="model", ema_epoch=None, ema_threshold=EMA_THRESHOLD,
                 splits=("train", "test"), max_batches=None, force=False, check_device="cpu"):
    """Compress a run folder: the final net (model.keras), or with `epoch` the state at the
    end of that epoch (its checkpoint's weights and moving averages; the history row of
    that epoch for ema_from="history")."""
    run = read_run(run_dir)
    state = None
    if epoch is None:
        model = load_model(run.model_path)
    else:
        if ema_epoch is not None and ema_epoch != epoch:
            raise UserError(f"--ema-epoch {ema_epoch} differs from --epoch {epoch}: the moving "
                            "averages would not be those of the compressed weights; drop "
                            "--ema-epoch")
        ema_epoch = epoch
        model, state = load_epoch(run, epoch)
    if not _gate_by_block(model):
        raise UserError(f"{run.model_path} has no gates: only ε- or k-gated nets have "
                        "removable blocks (train with gate eps or k)")
    ema = None
    if ema_from == "history":
        rows = read_history(run.root)
        if not rows:
            raise UserError(f"{run.history_path} is missing or empty: use --ema-from model")
        pick = rows[-1] if ema_epoch is None else next((r for r in rows if r["epoch"] == ema_epoch), None)
        if pick is None:
            raise UserError(f"no history row for epoch {ema_epoch} (epochs 1–{len(rows)})")
        ema = pick["blocks"]
    data = run_datasets(run, data_dir, splits, max_batches)
    check = data.get("test") or run_datasets(run, data_dir, ("test",), max_batches)["test"]
    folder = run.folder
    out = Path(out) if out else folder.reduced
    weights = folder.model if epoch is None else folder.checkpoint_path(epoch)
    extra = {"run": str(run.root), "dataset": run.dataset, "ema_from": ema_from,
             "ema_epoch": ema_epoch, "epoch": epoch,
             "weights": weights.relative_to(folder.root).as_posix()}
    if state is not None and state.get("history"):
        extra["step"] = state["history"][-1].get("step")
    return compress_model(model, run.arch, run.build_options, certify_data=data,
                          check_data=check, out_dir=out, batch_size=run.batch_size, rule=rule,
                          ema=ema, ema_threshold=ema_threshold, gates=gates,
                          check_device=check_device, force=force, extra=extra)


# --- command line ----------------------------------------------------------------------

def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _cli(args):
    doc = compress_run(args.run_dir, args.data_dir, args.out, rule=args.rule, gates=args.gates,
                       epoch=args.epoch, ema_from=args.ema_from, ema_epoch=args.ema_epoch,
                       ema_threshold=args.ema_threshold, splits=tuple(args.splits.split(",")),
                       max_batches=args.max_batches, force=args.force)
    eq = doc["equivalence"]
    b, a = doc["before"], doc["after"]
    where = "final model" if doc.get("epoch") is None else f"epoch {doc['epoch']}"
    print(f"{where}, rule {doc['rule']}: removed {doc['removed_count']} of "
          f"{doc['blocks_before']} blocks ({', '.join(doc['removed']) or 'none'}); "
          f"reduced net gates: {doc['reduced_gates']}")
    print(f"params {b['trainable_params']:,} -> {a['trainable_params']:,}; layers {b['layers']} -> "
          f"{a['layers']}; MACs {b['macs']:,} -> {a['macs']:,}")
    dis = doc["disagreements"]
    if dis["ema_only"] or dis["certificate_only"]:
        print(f"the rules disagree: only the authors' EMA rule removes "
              f"{', '.join(dis['ema_only']) or 'none'}; only the certificate removes "
              f"{', '.join(dis['certificate_only']) or 'none'}")
    else:
        print("the rules agree: both remove the same blocks")
    r = doc["rules"]
    print(f"test error on {eq['images']} images: trained {_pct(eq.get('error_full'))}; "
          + "; ".join(f"{RULES[n]} ({r[n]['removed_count']} removed) {_pct(r[n]['test_error'])}"
                      for n in RULES))
    print(f"equivalence on {eq['images']} test images: max |logit diff| "
          f"{eq['max_abs_logit_diff']:.3g} ({'passed' if eq['passed'] else 'FAILED'}, "
          f"tolerance {eq['tolerance']:g})")
    if not eq["passed"]:
        if doc["rule"] == "ema":   # expected: the authors' rule is not a proof
            print("the authors' EMA rule changed predictions (it is not certified); "
                  "the difference is in certificate.json")
            return 0
        print("the reduced net does not reproduce the trained one; exports kept for inspection",
              file=__import__("sys").stderr)
        return 1
    return 0


def register(subparsers):
    p = subparsers.add_parser(
        "compress", help="certify removable blocks and export the reduced standard ResNet",
        description="Certify which blocks of a trained run contribute nothing (gate 0 on every "
                    "image of the training and test sets, or g(k) = 0), rebuild the net "
                    "without them, check identical predictions on the test set and export "
                    "RUN_DIR/reduced/{reduced.keras, saved_model/, certificate.json}.")
    p.add_argument("run_dir", help="run folder written by `epsresnet train`")
    p.add_argument("--data-dir", default=os.environ.get("EPSRESNET_DATA", "data"),
                   help="dataset root (default: data, or $EPSRESNET_DATA)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/reduced)")
    p.add_argument("--rule", choices=("certificate", "ema"), default="certificate",
                   help="certificate (proof on the data, default) or ema (the authors' rule: "
                        "the moving average printed with 5 significant digits reads 1); "
                        "both nets are built and their test errors reported")
    p.add_argument("--epoch", type=int, default=None,
                   help="compress the state at the end of this epoch (its checkpoint, kept "
                        "with the config's keep_checkpoints_at / keep_checkpoints_every) "
                        "instead of the final model.keras")
    p.add_argument("--gates", choices=GATE_POLICIES, default=None,
                   help="gates of the kept blocks of the exported net: auto (plain where "
                        "exact; the certificate's default), keep, none, plain (always the "
                        "standard ResNet, as the authors; the EMA rule's default)")
    p.add_argument("--ema-from", choices=("model", "history"), default="model",
                   help="EMA values of the compressed net's gates, or a history.jsonl row")
    p.add_argument("--ema-epoch", type=int, default=None,
                   help="history row (default: --epoch, else the last)")
    p.add_argument("--ema-threshold", type=float, default=EMA_THRESHOLD,
                   help=f"EMA at or above which a block counts as discarded ({EMA_THRESHOLD:g}: "
                        "the authors' log printed it as 1)")
    p.add_argument("--splits", default="train,test", help="splits to certify on (train,test)")
    p.add_argument("--max-batches", type=int, default=None,
                   help="certify and check on the first N batches of each split only (smoke runs)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cli)
