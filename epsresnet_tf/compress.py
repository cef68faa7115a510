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

How a gate is certified and how a kept one folds is its kind's (`epsresnet_tf.gates`):
ε-gates from per-image values, which certify both scopes (epsresnet_tf/gates/eps.py says
why); scalar gates such as k from their scalar alone.

The reduced net. A removed ε-block contributed T·F = 0 and a removed k-block g(k)·F = 0,
so dropping it changes no activation — provided the unit is then an identity (or the
group's transition). A closed unit whose shortcut still maps x (He et al.'s constant
scaling λx and gatings (1 − g(x))·x, the conv1x1 shortcut) or with BN-ReLU after the
addition is kept, and each block's entry says why (`closed_unit`). Kept blocks follow
`gates`:
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

The exports (epsresnet_tf/exports.py) are the exported rule's net in Keras's own layers:
reduced.keras loads with `keras.models.load_model` in a Python without this package
(certificate.json's "exports" names any layer left that needs other code), the SavedModel
with TensorFlow alone, and with `tflite` a TFLite flatbuffer checked for the same top-1 on
the check data.
"""

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epsresnet_tf import gates as G
from epsresnet_tf import jsonsafe
from epsresnet_tf.config import dtype_policy, keras_precision
from epsresnet_tf.data.batches import iter_images
from epsresnet_tf.errors import UserError
from epsresnet_tf.exports import check_tflite, custom_layers, standard_net, write_tflite
from epsresnet_tf.gates import gate_by_block, to_float
from epsresnet_tf.models.describe import _calls, model_stats
from epsresnet_tf.naming import (
    block_id,
    layer_prefix,
    parse_block_id,
    shared_prefix,
    sort_block_ids,
    split_layer_name,
    split_transition_name,
)
from epsresnet_tf.outputs import load_net, staged_outputs
from epsresnet_tf.runfolder import (
    CERTIFICATE,
    REDUCED_MODEL,
    REDUCED_TFLITE,
    SAVED_MODEL,
    read_history,
    read_run,
    run_data_dir,
)

if TYPE_CHECKING:
    import keras

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
EMA_THRESHOLD = 1 - 0.5 * 10**-EMA_DIGITS  # 0.999995
#: Gates of the kept blocks: "auto", "keep", "none" (see the module docstring) and "plain":
#: always the standard ResNet, exact or not — the authors' reduced net (their EMA rule).
GATE_POLICIES = ("auto", "keep", "none", "plain")

# --- model structure -------------------------------------------------------------------


def logits_of(outputs: Any) -> Any:
    """The prediction logits of a model output (a dict when the side head is present)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def block_layout(model: "keras.Model") -> dict[int, int]:
    """{group: number of units} from the `group{g}_block{b}_…` layer names."""
    seen = {}
    for layer in model.layers:
        parts = split_layer_name(layer.name)
        if parts:
            g, b, _ = parts
            seen[g] = max(seen.get(g, 0), b + 1)
    return seen


# --- the certificate -------------------------------------------------------------------


@dataclasses.dataclass
class Certificate:
    scope: str
    batch_size: int
    images: dict  # split -> images certified
    batches: dict  # split -> batches
    blocks: dict  # id -> BlockVerdict

    @property
    def closed(self):
        """Blocks whose gate is closed on every certified image (their branch adds 0)."""
        return sort_block_ids(b for b, v in self.blocks.items() if v.verdict == "closed")

    @property
    def removable(self):
        """The closed blocks the certificate removes: those whose unit is then exactly what
        the reduced net puts in its place (`closed_unit`); the others are kept."""
        return sort_block_ids(b for b, v in self.blocks.items() if v.removable)

    def as_dict(self):
        return {
            "scope": self.scope,
            "batch_size": self.batch_size,
            "images": self.images,
            "batches": self.batches,
            "blocks": {b: self.blocks[b].as_dict() for b in sort_block_ids(self.blocks)},
        }


#: He et al.'s shortcut gatings (layers.SigmoidShortcutGate modes) by their config name.
_GATINGS = {"exclusive": "exclusive_gating", "shortcut_only": "shortcut_only_gating"}
_KEPT = "closed but kept: "


def _inputs(layer):
    """The tensors a unit's layer was called on (each is called once)."""
    return list(layer._inbound_nodes[0].input_tensors)


def _producer(tensor):
    return tensor._keras_history.operation


def _nonnegative(tensor):
    """Whether `tensor` is provably >= 0: a ReLU's output, seen through layers that keep
    signs at inference (pooling, the pool+pad shortcut, dropout)."""
    import keras

    from epsresnet_tf import layers as L

    keeps_sign = (
        keras.layers.MaxPooling2D,
        keras.layers.AveragePooling2D,
        keras.layers.Dropout,
        L.PoolPadShortcut,
    )
    layer = _producer(tensor)
    while isinstance(layer, keeps_sign):
        layer = _producer(_inputs(layer)[0])
    return (
        isinstance(layer, keras.layers.ReLU)
        and not layer.negative_slope
        and float(layer.threshold) >= 0
    )


def closed_unit(model: "keras.Model", bid: str) -> tuple[bool, str]:
    """(removable, why): whether unit `bid` of `model`, its gated branch adding 0, is exactly
    what the reduced net puts in its place — nothing where its shortcut is the identity
    (dropout: at inference), the group's transition where it is the first unit's pool+pad
    or projection shortcut. He et al.'s merging shortcuts still map x (constant scaling λx,
    the gatings (1 − g(x))·x), as do the conv1x1 shortcut, BN-ReLU after the addition
    (bn_after_add) and a ReLU after it (original) unless x >= 0: those units are kept."""
    from epsresnet_tf import layers as L

    g, b = parse_block_id(bid)
    p = layer_prefix(g, b)
    unit = {l.name[len(p) :]: l for l in model.layers if l.name.startswith(p)}
    scale = unit.get("shortcut_scale")
    if scale is not None and (float(scale.scale), float(scale.offset)) != (1.0, 0.0):
        # λx cannot fold exactly into the next unit: its BatchNorm and shortcut both see it
        return False, (
            _KEPT + f"its constant_scaling shortcut scales x by {float(scale.scale):g}, "
            "not an identity"
        )
    gate = unit.get("shortcut_gate")
    if isinstance(gate, L.SigmoidShortcutGate):
        return False, (
            _KEPT + f"its {_GATINGS[gate.mode]} shortcut scales x by 1 − sigmoid(conv(x)), "
            "not an identity"
        )
    conv = unit.get("shortcut_conv")
    # Equal shapes: He et al.'s conv1x1 variant, which no transition keeps (a projection
    # changes the channels or the resolution).
    if conv is not None and tuple(conv.input.shape) == tuple(conv.output.shape):
        return False, _KEPT + "its conv1x1 shortcut maps x by a learned 1×1 conv, not an identity"
    if "out_bn" in unit:
        return False, _KEPT + "BN-ReLU after the addition (order bn_after_add) changes x"
    if "shortcut_pool_pad" in unit or conv is not None:
        kind = "pool+pad" if conv is None else "projection"
        why = f"closed: the unit is then its {kind} shortcut, kept as group{g}'s transition"
    elif "shortcut_dropout" in unit:
        why = "closed: the unit is then its dropout shortcut, the identity at inference"
    else:
        why = "closed: the unit is then its identity shortcut"
    relu = unit.get("out_relu")
    merge = _producer(relu.input) if relu is not None else None
    if merge is not None and len(_inputs(merge)) == 2:  # a ReLU after the addition
        if not _nonnegative(_inputs(merge)[1]):
            return False, (
                _KEPT + "the ReLU after the addition (order original) changes its shortcut, "
                "which can be negative"
            )
        why += "; the ReLU after the addition sees x >= 0"
    return True, why


def certify(
    model: "keras.Model", datasets: dict, scope: str | None = None, batch_size: int | None = None
) -> "Certificate":
    """Per-block verdicts for every gate of `model`, each by its kind's `certify`; every
    verdict says whether the certificate removes its block and why (`closed_unit`).

    datasets: {split name: iterable of batches} in the order the run would see them (the
    run's batch size: batch-scope "open" depends on the batching; "closed" does not).
    scope: "batch" or "sample" (default: the gates' own). k-gates need no data: closed
    exactly when g(k) = relu(k) = 0.
    """
    gates = gate_by_block(model)
    scopes = {G.kind_of(l).scope(l) for l in gates.values()} - {None}
    scope = scope or (scopes.pop() if len(scopes) == 1 else "batch")
    if scope not in ("batch", "sample"):
        raise UserError(f"scope must be 'batch' or 'sample', not {scope!r}")
    by_kind = {}
    for b, layer in gates.items():
        by_kind.setdefault(G.kind_of(layer).name, {})[b] = layer
    verdicts, images, batches = {}, {}, {}
    for name, layers in by_kind.items():
        v, i, n = G.get_gate(name).certify(model, layers, datasets, scope)
        verdicts.update(v)
        images.update(i)
        batches.update(n)
    verdicts = {b: verdicts[b] for b in gates}  # network order
    for b, v in verdicts.items():
        if v.verdict == "closed":
            v.removable, v.reason = closed_unit(model, b)
        else:
            v.removable = False
            v.reason = (
                "kept: its gate is open"
                if v.verdict == "open"
                else "kept: its gate is open on some certified images or batches"
            )
    return Certificate(scope, int(batch_size) if batch_size else None, images, batches, verdicts)


def printed_as_authors(value: float, digits: int = EMA_DIGITS) -> str:
    """A monitor value as tensorpack 0.2.0's text log printed it ('{:.5g}'): the authors'
    compressModel.py took a block whose printed is_discarded parses to 1.0."""
    return "{:.{}g}".format(float(value), digits)


def ema_removable(source: Any, threshold: float = EMA_THRESHOLD) -> list[str]:
    """The authors' rule (docs/semantics.md): blocks whose moving average of "discarded"
    reads 1 in their log, i.e. >= EMA_THRESHOLD (0.999995).
    `source`: a model (its gates' `discarded_ema`) or {block id: ema} (e.g. a history row's
    per-block "discarded")."""
    if hasattr(source, "layers"):
        emas = {b: to_float(l.discarded_ema) for b, l in gate_by_block(source).items()}
    else:
        emas = {b: (v["discarded"] if isinstance(v, dict) else float(v)) for b, v in source.items()}
    return sort_block_ids(b for b, v in emas.items() if v >= threshold)


def disagreements(certificate: "Certificate", ema_ids: list[str]) -> dict[str, list[str]]:
    """Where the moving-average rule and the certificate differ: "ema_only" blocks would be
    removed by the EMA rule but the certificate keeps them (not provably closed, or closed
    but no identity: removing them may change predictions); "certificate_only" blocks are
    provably removable but the EMA lags."""
    removable, ema = set(certificate.removable), set(ema_ids)
    return {
        "ema_only": sort_block_ids(ema - removable),
        "certificate_only": sort_block_ids(removable - ema),
    }


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
    parts = split_layer_name(name)
    if parts:
        g, b, rest = parts
        return layer_prefix(g, inverse[(g, b)]) + rest
    parts = split_transition_name(name)
    if parts:  # the old first unit's shortcut path (docs/semantics.md)
        return layer_prefix(parts[0], 0) + parts[1]
    return name


def _decide_gates(model, kept, gates, certificate):
    """Which gate kind the reduced net gets ("none" or the kept gates' kind), the kept
    gates that fold into a conv ({block id: Fold}) and why: the kind's `plain_decision`
    says whether dropping its kept gates is exact."""
    by_block = gate_by_block(model)
    kept_gates = {b: by_block[b] for b in kept if b in by_block}
    if not kept_gates:
        return "none", {}, "no gates remain"
    kind = G.kind_of(next(iter(kept_gates.values())))  # one kind per net
    exact, folds, why = kind.plain_decision(kept_gates, certificate)
    if gates == "keep":
        return kind.name, {}, "gates kept on request (--gates keep)"
    if gates == "plain":  # the authors' reduced net: a standard ResNet whatever the data say
        if not exact and not kind.plain_drops_inexact:
            return kind.name, {}, f"{kind.label}-gates kept: {why}"
        return (
            "none",
            folds,
            (
                "standard ResNet (the authors' reduced net): "
                + (why if exact else f"not exact, {why}")
            ),
        )
    if gates == "none" and not exact:
        raise UserError(f"--gates none is not exact here ({why}); use --gates auto or keep")
    if exact:
        return "none", folds, why
    return kind.name, {}, why


def reduce(
    model: "keras.Model",
    arch: str,
    build_options: dict,
    removable: list[str],
    gates: str = "auto",
    certificate: "Certificate | None" = None,
) -> tuple["keras.Model", dict]:
    """The reduced network without the `removable` blocks (ids `group{g}/block{b}`), weights
    copied by layer name: (keras.Model, info with the renumbering, per-group counts, groups
    whose first unit went, gate decision). `build_options`: the keyword arguments the
    trained net was built with (classes, input_shape, gate, ε, share, order, …); the side
    head is never part of the reduced net."""
    if gates not in GATE_POLICIES:
        raise UserError(f"gates must be one of {', '.join(GATE_POLICIES)}, not {gates!r}")
    layout = block_layout(model)
    removed = _blocks_in(layout, removable)
    mapping, counts, first_removed = _renumbering(layout, removed)
    kept = [block_id(g, b) for (g, b) in sorted(mapping)]
    kind, folds, why = _decide_gates(model, kept, gates, certificate)

    options = dict(build_options, side_head=False, gate=kind)
    reduced = _build_like(model, arch, counts, first_removed, options)
    inverse = {(g, new): old for (g, old), new in mapping.items()}
    copied = _copy_weights(model, reduced, inverse, {f.conv.name: f.factor for f in folds.values()})
    # Every trained weight is either copied or belongs to a removed block, a gate the
    # plain reduced net drops (open ε-gates: T = 1; folded k-gates) or the side head.
    removed_prefixes = tuple(layer_prefix(g, b) for g, b in removed) + tuple(
        shared_prefix(g) for g, n in enumerate(counts) if n == 0
    )  # no unit left to use it
    folded_gates = {l.name for l in gate_by_block(model).values()} if kind == "none" else set()
    missing = [
        l.name
        for l in model.layers
        if l.weights
        and l.name not in copied
        and not l.name.startswith(removed_prefixes)
        and not l.name.startswith("side_head")
        and l.name not in folded_gates
    ]
    if missing:
        raise UserError(
            f"weights of {', '.join(missing[:5])} were not carried over: the "
            "reduced layout does not match the trained net"
        )
    info = {
        "removed": sort_block_ids(block_id(*b) for b in removed),
        "renumbered": {
            block_id(g, old): block_id(g, new) for (g, old), new in sorted(mapping.items())
        },
        "blocks_per_group_before": [layout.get(g, 0) for g in range(len(counts))],
        "blocks_per_group_after": counts,
        "first_removed": list(first_removed),
        "reduced_gates": kind,
        "gate_decision": why,
        "folded_k": sort_block_ids(folds),
    }
    return reduced, info


def _blocks_in(layout, block_ids):
    """{(group, block)} of `block_ids`; UserError naming those the layout does not have."""
    blocks = {parse_block_id(b) for b in block_ids}
    unknown = [b for b in blocks if b[0] not in layout or b[1] >= layout[b[0]]]
    if unknown:
        raise UserError(f"blocks not in the model: {', '.join(block_id(*b) for b in unknown)}")
    return blocks


def _build_like(model, arch, counts, first_removed, options):
    """The reduced architecture at the trained net's precision (so the check compares like
    with like)."""
    from epsresnet_tf.models.registry import build_model  # the builders import Keras

    first = next(l for l in model.layers if l.weights)  # the stem: the net's compute policy
    with keras_precision(first.dtype_policy.name):
        return build_model(arch, blocks_per_group=counts, first_removed=first_removed, **options)


def _copy_weights(model, reduced, inverse, folded):
    """Copy every weighted layer of `reduced` from its counterpart in `model` (renumbered by
    `inverse`; a folded gate's factor multiplied into its conv). The names copied from."""
    source = {l.name: l for l in model.layers}
    copied = set()
    for layer in reduced.layers:
        if not layer.weights:
            continue
        name = _source_name(layer.name, inverse)
        if name not in source:
            raise UserError(
                f"reduced layer {layer.name} has no counterpart {name} in the "
                "trained net: were the build options the ones it was trained with?"
            )
        weights = source[name].get_weights()
        if name in folded:  # φ·conv_W(x) = conv_{φ·W}(x): the gate folds into the kernel
            weights = [w * np.asarray(folded[name], w.dtype) for w in weights]
        target = [w.shape for w in layer.weights]
        if [tuple(w.shape) for w in weights] != [tuple(t) for t in target]:
            raise UserError(
                f"{layer.name}: weight shapes {[w.shape for w in weights]} differ "
                f"from {name}'s {target}: build options do not match the trained net"
            )
        layer.set_weights(weights)
        copied.add(name)
    return copied


# --- sizes and the check ---------------------------------------------------------------


def model_size(model: "keras.Model") -> dict[str, Any]:
    """Sizes of the prediction path (the side head excluded): the paper's trainable
    parameters, all parameters, their float32 bytes, conv kernels, layers (weighted layers
    on the main path: convs at every use except shortcuts, + dense; 6n+2 for CIFAR basic),
    blocks and MACs per image."""
    import keras

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
    return {
        "params": params,
        "trainable_params": trainable,
        "param_bytes": 4 * params,
        "trainable_bytes": 4 * trainable,
        "conv_layers": stats["conv_layers"],
        "layers": layers,
        "blocks": stats["blocks"],
        "macs": stats["macs"] - side_macs,
    }


def check_equivalence(
    full: "keras.Model",
    reduced: "keras.Model",
    data: Any,
    tolerance: float = TOLERANCE,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run both nets on the same batches (inference mode) and compare logits."""
    import tensorflow as tf

    def run():
        worst, images, same, batches, wrong = 0.0, 0, 0, 0, [0, 0]
        labelled = True
        f_full = tf.function(lambda x: logits_of(full(x, training=False)), reduce_retracing=True)
        f_red = tf.function(lambda x: logits_of(reduced(x, training=False)), reduce_retracing=True)
        for item in data:
            x = next(iter_images([item]))
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
    out = {
        "max_abs_logit_diff": worst,
        "tolerance": tolerance,
        "passed": bool(worst <= tolerance),
        "images": images,
        "batches": batches,
        "same_top1": same,
        "device": device,
    }
    if wrong is not None:  # top-1 errors of both nets on the check's (test) images
        out.update(error_full=wrong[0] / images, error_reduced=wrong[1] / images)
    return out


# --- everything, with exports ----------------------------------------------------------

SCOPE_NOTE = {
    "batch": (
        "Batch scope: a closed block has T = 0 for every certified image, hence on every "
        "batch of any size or order drawn from these images. A kept gate certified "
        "'open' was open on every batch at this batch size and order; on other batches "
        "(another size, batch 1, unseen images) it could still close, and a gated net "
        "would then differ from the plain reduced net."
    ),
    "sample": (
        "Sample scope: a closed block has T = 0 for every certified image; a kept gate "
        "certified 'open' was open for every certified image, and may close on unseen "
        "images."
    ),
}


#: What each rule's net is called in certificate.json and the printed summary.
RULES = {"certificate": "certified", "ema": "authors' EMA rule"}


def compress_model(
    model: "keras.Model",
    arch: str,
    build_options: dict,
    *,
    certify_data: dict,
    check_data: Any,
    out_dir: "str | Path",
    scope: str | None = None,
    batch_size: int | None = None,
    rule: str = "certificate",
    ema: Any = None,
    ema_threshold: float = EMA_THRESHOLD,
    gates: str | None = None,
    tolerance: float = TOLERANCE,
    check_device: str = "cpu",
    force: bool = False,
    export: bool = True,
    tflite: bool = False,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Certify, reduce, check, export. Writes `out_dir/{reduced.keras, saved_model/,
    certificate.json}` (`tflite`: and reduced.tflite, checked on `check_data`), returns the
    certificate dict. rule: "certificate" (default) or "ema" (the authors' moving-average
    rule; the check then says whether it was safe).

    Both rules' reduced nets are built and run on `check_data` (the test split): the
    document's "rules" holds each one's removals, layout and test error (labelled data),
    "disagreements" the blocks only one rule removes. The exported net is `rule`'s, with
    `gates` as its policy (None: "auto" for the certificate, "plain" — the authors' standard
    ResNet — for the EMA rule); the other rule's net gets that default."""
    out_dir = Path(out_dir)
    policy = _policies(rule, gates)
    _prepare_out(out_dir, force)
    cert = certify(model, certify_data, scope=scope, batch_size=batch_size)
    ema_ids = ema_removable(model if ema is None else ema, ema_threshold)
    nets, infos, checks, exported = _reduce_by_both_rules(
        model,
        arch,
        build_options,
        {"certificate": cert.removable, "ema": ema_ids},
        policy,
        rule,
        cert,
        lambda net: check_equivalence(model, net, check_data, tolerance, check_device),
    )
    full_inference, _ = reduce(model, arch, build_options, [], gates="keep", certificate=cert)
    sizes = model_size(full_inference), model_size(nets[rule])
    doc = _certificate_doc(arch, rule, cert, ema_ids, ema_threshold, policy, infos, checks, sizes)
    doc.update(extra or {})
    # Built beside the old outputs and swapped in at the end: a failure or a kill while
    # exporting leaves the previous reduced/ whole.
    with staged_outputs(out_dir, owned=OUTPUT_NAMES) as stage:
        _write_outputs(stage, exported if export else None, doc, tflite, check_data)
    return doc


def _policies(rule, gates):
    """Each rule's gate policy: "auto" for the certificate, "plain" (the authors' standard
    ResNet) for the EMA rule, and `gates` where given for the exported `rule`."""
    if rule not in RULES:
        raise UserError(f"rule must be 'certificate' or 'ema', not {rule!r}")
    policy = {"certificate": "auto", "ema": "plain"}
    if gates is not None:
        policy[rule] = gates
    return policy


#: The reduction's facts that certificate.json copies as they are.
_INFO_KEYS = (
    "blocks_per_group_before",
    "blocks_per_group_after",
    "renumbered",
    "reduced_gates",
    "gate_decision",
    "folded_k",
)


def _certificate_doc(arch, rule, cert, ema_ids, ema_threshold, policy, infos, checks, sizes):
    """certificate.json's document (before the caller's extras); `sizes`: the model_size of
    the full and of the exported reduced net."""
    info, (before, after) = infos[rule], sizes
    dis = disagreements(cert, ema_ids)
    return {
        "arch": arch,
        "rule": rule,
        "scope": cert.scope,
        "certified_on": {
            "images": cert.images,
            "batches": cert.batches,
            "batch_size": cert.batch_size,
        },
        "removed": info["removed"],
        "removed_count": len(info["removed"]),
        "blocks_before": before["blocks"],
        "blocks_after": after["blocks"],
        **{key: info[key] for key in _INFO_KEYS},
        "first_removed_groups": info["first_removed"],
        "before": before,
        "after": after,
        "compression": {
            k: (before[k] / after[k] if after[k] else None)
            for k in ("params", "layers", "macs", "blocks")
        },
        "equivalence": checks[rule],
        "rules": {n: _rule_summary(n, policy[n], infos[n], checks[n]) for n in RULES},
        "disagreements": dis,
        "ema_rule": {
            "threshold": ema_threshold,
            "digits": EMA_DIGITS,
            "removable": ema_ids,
            "disagreements": dis,
        },
        "note": SCOPE_NOTE[cert.scope],
        "blocks": cert.as_dict()["blocks"],
    }


def _write_outputs(out_dir, net, doc, tflite=False, check_data=()):
    """reduced.keras and the SavedModel of the standard-layer `net` (None: no exports), with
    `tflite` reduced.tflite checked against `net` on `check_data`, then certificate.json;
    doc["exports"] says what was written and what loading it needs."""
    if net is not None:
        net.save(out_dir / REDUCED_MODEL)
        net.export(str(out_dir / SAVED_MODEL), verbose=False)
        custom = custom_layers(net)
        doc["exports"] = {
            "keras": REDUCED_MODEL,
            "saved_model": SAVED_MODEL,
            # Keras's own layers and ops: loads without epsresnet_tf. A gate kind registered
            # from outside the package keeps its layer, and then needs that code.
            "keras_standalone": not custom,
            "custom_layers": custom,
            "tflite": None,
        }
        if tflite:
            size = write_tflite(net, out_dir / REDUCED_TFLITE, saved_model=out_dir / SAVED_MODEL)
            check = check_tflite(out_dir / REDUCED_TFLITE, net, iter_images(check_data))
            doc["exports"]["tflite"] = {"file": REDUCED_TFLITE, "bytes": size, **check}
    (out_dir / CERTIFICATE).write_text(jsonsafe.dumps(doc, indent=2) + "\n")


def _reduce_by_both_rules(model, arch, build_options, removable, policy, rule, cert, check):
    """Each rule's reduced net, its info and its check (`check(net)`), the exported rule's
    first; that rule's net is checked as it is exported, in Keras's own layers
    (exports.standard_net): ({rule: net}, {rule: info}, {rule: check}, the export)."""
    nets, infos, checks, exported = {}, {}, {}, None
    for name in (rule,) + tuple(r for r in RULES if r != rule):
        nets[name], infos[name] = reduce(
            model, arch, build_options, removable[name], gates=policy[name], certificate=cert
        )
        if name == rule:
            exported, _ = standard_net(nets[name])
        checks[name] = check(exported if name == rule else nets[name])
    return nets, infos, checks, exported


def _rule_summary(name, policy, info, check):
    """One rule's part of the certificate: what it removed, its net and its test error."""
    return {
        "net": RULES[name],
        "gates": policy,
        "removed": info["removed"],
        "removed_count": len(info["removed"]),
        "blocks_per_group_after": info["blocks_per_group_after"],
        "first_removed_groups": info["first_removed"],
        "reduced_gates": info["reduced_gates"],
        "gate_decision": info["gate_decision"],
        "test_error": check.get("error_reduced"),  # None on unlabelled check data
        "test_error_full": check.get("error_full"),
        "max_abs_logit_diff": check["max_abs_logit_diff"],
        "same_top1": check["same_top1"],
        "identical_predictions": check["passed"],
        "test_images": check["images"],
    }


#: What compress writes into its folder; with --force the old ones are replaced as a whole.
OUTPUT_NAMES = (REDUCED_MODEL, SAVED_MODEL, REDUCED_TFLITE, CERTIFICATE)


def _prepare_out(out_dir, force):
    """Refuse to replace earlier outputs without --force; deletes nothing (the new outputs
    replace the old ones only once they are complete: staged_outputs)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; --out needs a folder")
    existing = [n for n in OUTPUT_NAMES if (out_dir / n).exists()]
    if existing and not force:
        raise UserError(
            f"{out_dir} already holds {', '.join(existing)}; pass --force to "
            "replace them or --out another folder"
        )


# --- a run's data (the run folder's layout: epsresnet_tf.runfolder) -------------------


def run_datasets(run, data_dir, splits=("train", "test"), max_batches=None, batch_size=None):
    """Evaluation-order batches (no augmentation) of the run's dataset, per split name
    ("train" and "test" map to the dataset's own split names); `data_dir` None: the folder
    the run trained with (commands.run_data_dir)."""
    from epsresnet_tf.data.pipeline import eval_batches

    data_dir = run_data_dir(data_dir, run.root)

    return {
        split: eval_batches(
            run.dataset,
            split,
            data_dir,
            batch_size or run.batch_size,
            seed=run.seed,
            mean=run.mean,
            max_batches=max_batches,
        )
        for split in splits
    }


def load_epoch(run, epoch):
    """(net, checkpoint state) at the end of a finished `epoch`: the run's net built from
    config.json as training built it, every variable (weights, BatchNorm statistics, ε,
    the gates' moving averages) from `ckpt/epoch-<epoch>.npz`. UserError naming the kept
    epochs and the setting to use when that checkpoint is gone."""
    from epsresnet_tf.models.registry import build_model  # the builders import Keras

    folder = run.folder
    path = folder.checkpoint_path(epoch)
    if not path.is_file():
        kept = folder.kept_epochs()
        raise UserError(
            f"no checkpoint of epoch {epoch} in {folder.ckpt} (kept: "
            f"{', '.join(map(str, kept)) or 'none'}); train with "
            f'"keep_checkpoints_at": [{epoch}] (or keep_checkpoints_every) in the '
            "config to keep it, or compress a kept epoch"
        )
    try:
        arrays, state = folder.load(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is unreadable ({err}): compress another kept epoch") from err
    cfg = run.config
    with keras_precision(dtype_policy(cfg)):  # the run's precision, as training set it
        net = build_model(run.arch, side_head=cfg.get("side_head", True), **run.build_options)
    variables = net.variables  # the checkpoint holds these first, then the optimizer's
    if len(arrays) < len(variables) or any(
        tuple(v.shape) != a.shape for v, a in zip(variables, arrays)
    ):
        raise UserError(
            f"{path} does not match the net config.json describes: was the run "
            "folder's config.json edited?"
        )
    for v, a in zip(variables, arrays):
        v.assign(a)
    if state.get("epoch") != epoch:
        raise UserError(f"{path} holds epoch {state.get('epoch')}, not {epoch}")
    return net, state


def _load_weights(run, epoch, ema_epoch):
    """The net to compress: (model, checkpoint state or None, the EMA's epoch). The final
    model.keras, or with `epoch` its checkpoint (then the EMA's epoch must be the same)."""
    if epoch is None:
        return load_net(run.model_path), None, ema_epoch
    if ema_epoch is not None and ema_epoch != epoch:
        raise UserError(
            f"--ema-epoch {ema_epoch} differs from --epoch {epoch}: the moving "
            "averages would not be those of the compressed weights; drop "
            "--ema-epoch"
        )
    model, state = load_epoch(run, epoch)
    return model, state, epoch


def _history_ema(run, ema_epoch):
    """The gates' moving averages in history.jsonl's row of `ema_epoch` (None: the last)."""
    rows = read_history(run.root)
    if not rows:
        raise UserError(f"{run.history_path} is missing or empty: use --ema-from model")
    pick = (
        rows[-1] if ema_epoch is None else next((r for r in rows if r["epoch"] == ema_epoch), None)
    )
    if pick is None:
        raise UserError(f"no history row for epoch {ema_epoch} (epochs 1–{len(rows)})")
    return pick["blocks"]


def _run_extra(run, epoch, ema_from, ema_epoch, state):
    """What certificate.json records about the run and the weights it compressed."""
    folder = run.folder
    weights = folder.model if epoch is None else folder.checkpoint_path(epoch)
    extra = {
        "run": str(run.root),
        "dataset": run.dataset,
        "ema_from": ema_from,
        "ema_epoch": ema_epoch,
        "epoch": epoch,
        "weights": weights.relative_to(folder.root).as_posix(),
    }
    if state is not None and state.get("history"):
        extra["step"] = state["history"][-1].get("step")
    return extra


def compress_run(
    run_dir: "str | Path",
    data_dir: "str | Path | None" = None,
    out: "str | Path | None" = None,
    *,
    rule: str = "certificate",
    gates: str | None = None,
    epoch: int | None = None,
    ema_from: str = "model",
    ema_epoch: int | None = None,
    ema_threshold: float = EMA_THRESHOLD,
    splits: tuple[str, ...] = ("train", "test"),
    max_batches: int | None = None,
    force: bool = False,
    check_device: str = "cpu",
    tflite: bool = False,
) -> dict[str, Any]:
    """Compress a run folder: the final net (model.keras), or with `epoch` the state at the
    end of that epoch (its checkpoint's weights and moving averages; the history row of
    that epoch for ema_from="history"). `data_dir` None: the folder the run trained with."""
    run = read_run(run_dir)
    model, state, ema_epoch = _load_weights(run, epoch, ema_epoch)
    if not gate_by_block(model):
        raise UserError(
            f"{run.model_path} has no gates: only gated nets have removable "
            f"blocks (train with gate {' or '.join(G.gate_kinds())})"
        )
    ema = _history_ema(run, ema_epoch) if ema_from == "history" else None
    data = run_datasets(run, data_dir, splits, max_batches)
    check = data.get("test") or run_datasets(run, data_dir, ("test",), max_batches)["test"]
    return compress_model(
        model,
        run.arch,
        run.build_options,
        certify_data=data,
        check_data=check,
        out_dir=Path(out) if out else run.folder.reduced,
        batch_size=run.batch_size,
        rule=rule,
        ema=ema,
        ema_threshold=ema_threshold,
        gates=gates,
        check_device=check_device,
        force=force,
        tflite=tflite,
        extra=_run_extra(run, epoch, ema_from, ema_epoch, state),
    )


# --- command line ----------------------------------------------------------------------
