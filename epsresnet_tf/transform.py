"""Gate any Keras residual net, and take the discarded units out of it again, by rewriting
its functional graph with Keras's own `clone_model` (docs/keras-models.md).

`gate_model` puts a gate of any registered kind on the branch of every unit the locators
find (units.py) before its `Add`; the gate layer is named `group{g}_block{b}_<suffix>` like
the gates of this project's nets, so monitors, history, TensorBoard and certificates read it
the same way. `remove_units` is compression on the same graph: a removed unit becomes its
shortcut alone (nothing for an identity; a projection or the 1x1 max-pool stays), a gate
the reduced net drops becomes the identity (an ε-gate open on every certified batch) or is
folded into its branch's last conv (a k-gate's φ). Every other layer keeps its name and its
weights, so the reduced net is the original one minus the discarded units.
"""

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block, get_gate, kind_of
from epsresnet_tf.naming import parse_block_id
from epsresnet_tf.units import consumers, inputs_of, locate_units, producer

if TYPE_CHECKING:
    import keras

    from epsresnet_tf.blocks import NetConfig

#: The layers whose kernels carry weight decay when `gate_model` is given one.
_DECAYED = ("Conv2D", "Dense", "DepthwiseConv2D", "SeparableConv2D")


def gate_config(kind: str, epsilon: float, options: dict) -> "NetConfig":
    """The NetConfig a kind's `make_layer` reads: NetConfig fields among `options` (gate_scope,
    gate_group, k_decay) as they are, the rest as the kind's own `gate_options`."""
    from epsresnet_tf.blocks import NetConfig  # Keras

    fields = {f.name for f in dataclasses.fields(NetConfig)}
    known = {k: v for k, v in options.items() if k in fields}
    own = {k: v for k, v in options.items() if k not in fields}
    try:
        return NetConfig(gate=kind, epsilon=epsilon, gate_options=own, **known)
    except (TypeError, ValueError) as err:
        raise UserError(f"gate_model: {err}") from err


def _cloner(weight_decay=None, float32_outputs=()):
    """A clone_function: a new layer from the old one's config; with `weight_decay` c, every
    kernel carries c·½‖w‖² (L2(c/2), docs/semantics.md §6) as this project's nets do;
    layers named in `float32_outputs` compute in float32 (logits under mixed precision)."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if weight_decay is not None and type(layer).__name__ in _DECAYED:
            reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
            key = "depthwise_regularizer" if "depthwise_regularizer" in config else None
            config[key or "kernel_regularizer"] = keras.regularizers.serialize(reg) if reg else None
        if layer.name in float32_outputs:
            config["dtype"] = "float32"
        return type(layer).from_config(config)

    return clone


def _copy_weights(source, target, scaled=None) -> None:
    """Every weighted layer of `target` takes the weights of the layer of `source` with its
    name (a layer in `scaled` {name: factor} has them multiplied first)."""
    by_name = {l.name: l for l in source.layers}
    for layer in target.layers:
        if layer.weights and layer.name not in by_name and not _is_gate(layer):
            raise UserError(f"{layer.name} has no counterpart in {source.name}")
        if layer.weights and layer.name in by_name:
            weights = by_name[layer.name].get_weights()
            if scaled and layer.name in scaled:
                weights = [w * np.asarray(scaled[layer.name], w.dtype) for w in weights]
            layer.set_weights(weights)


def _is_gate(layer) -> bool:
    from epsresnet_tf.layers import GateLayer  # Keras

    return isinstance(layer, GateLayer)


def _output_layers(model) -> tuple:
    return tuple(producer(t).name for t in model.outputs)


def gate_model(
    model: "keras.Model",
    kind: str = "eps",
    epsilon: float = 0.0,
    *,
    adds: list | None = None,
    locator: str | None = None,
    weight_decay: float | None = None,
    float32_logits: bool = True,
    **kind_options: Any,
) -> "keras.Model":
    """A new model: `model` with a `kind` gate on every residual unit's branch before its
    `Add` (a merging kind, the k gate, takes the `Add`'s place), weights copied.

    Units are found by `units.locate_units` (this project's names, Keras applications'
    ResNetV2, or any two-input `Add`; `adds` names the `Add` layers to gate, `locator` picks
    one). `kind_options`: the kind's build options (gate_scope, gate_group, k_decay, or a
    kind's own). `weight_decay`: c of c·½‖w‖² on every kernel (None: the model's own
    regularizers as they are). `float32_logits`: the outputs compute in float32, as this
    project's heads do under mixed precision."""
    if not get_gate(kind).gated:
        raise UserError(f"gate_model needs a gate kind, not {kind!r}: use eps or k")
    config = gate_config(kind, float(epsilon), kind_options)
    return gate_net(
        model,
        config,
        adds=adds,
        locator=locator,
        weight_decay=weight_decay,
        float32_logits=float32_logits,
    )


def gate_net(
    model: "keras.Model",
    config: "NetConfig",
    *,
    adds: list | None = None,
    locator: str | None = None,
    weight_decay: float | None = None,
    float32_logits: bool = True,
) -> "keras.Model":
    """`gate_model` from a NetConfig (its gate kind and the kind's options): what the model
    registry's Keras families build with. Gate kind "none": the clone alone (the decay and
    float32 logits applied, no gate)."""
    import keras

    gate = get_gate(config.gate)
    units = locate_units(model, adds=adds, locator=locator) if gate.gated else []
    by_add = {u.add: u for u in units}
    seen = set()

    def call(layer, *args, **kwargs):
        unit = by_add.get(layer.name)
        if unit is None:
            return layer(*args, **kwargs)
        if unit.block in seen:
            raise UserError(f"two units would be {unit.block}; pass adds=[...] to choose")
        seen.add(unit.block)
        xs = list(args[0])
        f, x = xs[unit.branch], xs[1 - unit.branch]
        made = gate.make_layer(config, unit.prefix + gate.suffix)
        if gate.merges:  # u = φ·F + x: the gate is the unit's merge
            return made([f, x])
        xs[unit.branch] = made(f)
        return layer(xs, **kwargs)

    outputs = _output_layers(model) if float32_logits else ()
    gated = keras.models.clone_model(
        model, clone_function=_cloner(weight_decay, outputs), call_function=call
    )
    _copy_weights(model, gated)
    return gated


@dataclasses.dataclass(frozen=True)
class GatedUnit:
    """A unit of a gated net: its gate layer, the layer that merges F and x (the `Add`, or
    the gate itself for a merging kind) and which of that layer's inputs is the shortcut."""

    block: str
    gate: Any
    merge: Any
    shortcut: int


def gated_units(model) -> dict[str, GatedUnit]:
    """{block id: GatedUnit} of a gated net, in network order."""
    out = {}
    for bid, layer in gate_by_block(model).items():
        if kind_of(layer).merges:
            out[bid] = GatedUnit(bid, layer, layer, 1)  # the gate takes [F, x]
            continue
        after = consumers(layer)
        if len(after) != 1 or len(inputs_of(after[0])) != 2:
            raise UserError(f"{layer.name}: its output does not go into one two-input Add")
        merge = after[0]
        branch = [producer(t) is layer for t in inputs_of(merge)].index(True)
        out[bid] = GatedUnit(bid, layer, merge, 1 - branch)
    return out


def _ancestors(layer) -> set:
    """Names of `layer` and every layer it reads from, back to the inputs."""
    seen, todo = set(), [layer]
    while todo:
        current = todo.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        todo.extend(producer(t) for t in inputs_of(current))
    return seen


def branch_layers(model) -> dict[str, list]:
    """{block id: the layers of its branch F} of a gated net, read from the graph: what
    the gate reads from that the shortcut does not (so a ResNetV2 projection unit's
    shared pre-activation belongs to its shortcut). For nets whose layers are not named
    by block (Keras applications, a user's model), e.g. the per-block kernel histograms."""
    out = {}
    for bid, unit in gated_units(model).items():
        shortcut = producer(inputs_of(unit.merge)[unit.shortcut])
        outside = _ancestors(shortcut)
        todo = [producer(inputs_of(unit.gate)[0])]  # F (a merging gate takes [F, x])
        found, seen = [], set()
        while todo:
            layer = todo.pop()
            if layer.name in seen or layer.name in outside:
                continue
            seen.add(layer.name)
            found.append(layer)
            todo.extend(producer(t) for t in inputs_of(layer))
        order = {layer.name: i for i, layer in enumerate(model.layers)}
        out[bid] = sorted(found, key=lambda layer: order[layer.name])
    return out


def remove_units(
    model: "keras.Model",
    removed: list[str],
    drop_gates: bool = False,
    folds: dict | None = None,
) -> "keras.Model":
    """`model` without the units `removed` (block ids): each becomes its shortcut. With
    `drop_gates` every kept gate leaves the net too: as the identity, or for a block in
    `folds` ({block id: gates.Fold}) as a plain `Add` with φ multiplied into its conv. New
    layers, the trained weights copied by name."""
    import keras

    units = gated_units(model)
    unknown = [b for b in removed if b not in units]
    if unknown:
        raise UserError(f"blocks not in the model: {', '.join(unknown)}")
    folds = folds or {}
    gone = set(removed)
    by_merge = {u.merge.name: u for u in units.values()}
    by_gate = {u.gate.name: u for u in units.values()}

    def call(layer, *args, **kwargs):
        unit = by_merge.get(layer.name)
        if unit is not None and unit.block in gone:
            return list(args[0])[unit.shortcut]  # the unit is its shortcut alone
        if unit is not None and drop_gates and unit.merge is unit.gate:
            f, x = list(args[0])  # a merging gate leaves as F + x, φ in its conv's kernel
            if unit.block not in folds:
                raise UserError(f"{unit.block}: its {kind_of(unit.gate).label}-gate cannot fold")
            return keras.layers.Add(name=unit.gate.name + "_add")([f, x])
        unit = by_gate.get(layer.name)
        if unit is not None and drop_gates and unit.block not in gone:
            return args[0]  # an ε-gate open on every certified batch: T = 1
        return layer(*args, **kwargs)

    reduced = keras.models.clone_model(model, clone_function=_cloner(), call_function=call)
    _copy_weights(model, reduced, {f.conv.name: f.factor for f in folds.values()})
    return reduced


def group_counts(block_ids) -> dict[int, int]:
    """{group: number of the given units in it}."""
    out = {}
    for bid in block_ids:
        g, _ = parse_block_id(bid)
        out[g] = out.get(g, 0) + 1
    return out
