"""Reduction: the standard (or still gated) ResNet without the removable blocks, its units
renumbered, its gates decided by policy (the package docstring) and every trained weight
copied by layer name."""

from typing import TYPE_CHECKING

import numpy as np

from epsresnet_tf import gates as G
from epsresnet_tf.compress.check import logits_of
from epsresnet_tf.config import keras_precision
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.naming import (
    block_id,
    layer_prefix,
    parse_block_id,
    shared_prefix,
    sort_block_ids,
    split_layer_name,
    split_transition_name,
)
from epsresnet_tf.transform import gated_units, group_counts, remove_units

if TYPE_CHECKING:
    import keras

    from epsresnet_tf.compress.certificate import Certificate

#: Gates of the kept blocks: "auto", "keep", "none" (see the package docstring), "plain":
#: always the standard ResNet, exact or not — the authors' reduced net (their EMA rule) —
#: and "sample": reduced as "auto", its kept batch-scope gates then per image (deploy.py).
GATE_POLICIES = ("auto", "keep", "none", "plain", "sample")


def block_layout(model: "keras.Model") -> dict[int, int]:
    """{group: number of units} from the `group{g}_block{b}_…` layer names."""
    seen = {}
    for layer in model.layers:
        parts = split_layer_name(layer.name)
        if parts:
            g, b, _ = parts
            seen[g] = max(seen.get(g, 0), b + 1)
    return seen


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


#: Compute dtypes in which a gate's removal is not exact (see _decide_gates).
LOW_PRECISION = ("bfloat16", "float16")


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
    compute = next(l for l in model.layers if l.weights).dtype_policy.compute_dtype
    if exact and compute in LOW_PRECISION:
        # Measured (docs/keras-models.md): in bfloat16 the same net run eagerly and as a
        # tf.function differs by ~1e-2 in its logits, as TensorFlow's graph rewrites fuse a
        # conv with its Add and round once; a net without the gate between them fuses
        # differently, so dropping an open gate is not exact at this precision.
        exact, folds = False, {}
        why = f"the net computes in {compute}, where dropping a gate changes the rounding"
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
    from epsresnet_tf.models.registry import rebuilds  # the builders import Keras

    if gates not in GATE_POLICIES:
        raise UserError(f"gates must be one of {', '.join(GATE_POLICIES)}, not {gates!r}")
    gates = "auto" if gates == "sample" else gates  # the per-image T is the deployment's
    if not rebuilds(arch):
        return reduce_graph(model, removable, gates, certificate)
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


def reduce_graph(
    model: "keras.Model",
    removable: list[str],
    gates: str = "auto",
    certificate: "Certificate | None" = None,
) -> tuple["keras.Model", dict]:
    """`reduce` for a net compression does not rebuild (a Keras application, a user's own
    model gated by `transform.gate_model`): the discarded units taken out of its graph,
    each replaced by its shortcut; the kept units keep their ids and every layer its name.
    A side head (training only, as in the rebuilt nets) is not part of the reduced net."""
    import keras

    if isinstance(model.output, dict):  # {"logits", "side_logits"}: blocks.finish_model's
        model = keras.Model(model.inputs, logits_of(model.output), name=model.name)
    units = gated_units(model)
    unknown = [b for b in removable if b not in units]
    if unknown:
        raise UserError(f"blocks not in the model: {', '.join(unknown)}")
    gone = set(removable)
    kept = [b for b in units if b not in gone]
    kind, folds, why = _decide_gates(model, kept, gates, certificate)
    reduced = remove_units(model, sorted(gone), drop_gates=kind == "none", folds=folds)
    before, after = group_counts(units), group_counts(kept)
    groups = range(max(before) + 1 if before else 0)
    info = {
        "removed": sort_block_ids(gone),
        "renumbered": {b: b for b in kept},
        "blocks_per_group_before": [before.get(g, 0) for g in groups],
        "blocks_per_group_after": [after.get(g, 0) for g in groups],
        "first_removed": [],
        "reduced_gates": kind,
        "gate_decision": why,
        "folded_k": sort_block_ids(folds),
        "units": {b: units[b].merge.name for b in units},
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
