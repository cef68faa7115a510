"""Where the residual units of a Keras functional model are: the locators behind
`gate_model` (transform.py) and the graph compression of a gated net (docs/keras-models.md).

A unit is an `Add` of two tensors, its branch F and its shortcut x. Three locators:
- this project's nets: the `Add` named `group{g}_block{b}_add` (naming.py);
- Keras applications' ResNetV2 (`ResNet50V2/101V2/152V2`): the `Add` named
  `conv{s}_block{b}_out`, unit `group{s-2}/block{b-1}` (stage 2 is group 0);
- any functional model: every two-input `Add` (or the ones a user names), numbered in
  network order, a new group where the unit changes its input's shape.

Which input is the shortcut is read from the graph, not assumed: the shortcut is the input
whose path back to the two inputs' common ancestors is shorter (the identity has none; a
projection or the 1x1 max-pool has one or two layers; the branch has its convolutions).
"""

import dataclasses
import re

from epsresnet_tf.errors import UserError
from epsresnet_tf.naming import block_id, layer_prefix, parse_block_id

_PROJECT_ADD = re.compile(r"^group(\d+)_block(\d+)_add$")
_RESNET_V2_ADD = re.compile(r"^conv(\d+)_block(\d+)_out$")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One residual unit: its block id, the name its net gives it, its `Add` layer and the
    index of the branch F among that layer's two inputs."""

    block: str
    name: str
    add: str
    branch: int

    @property
    def prefix(self) -> str:
        """The prefix of the layers the transform adds to the unit (its gate)."""
        return layer_prefix(*parse_block_id(self.block))


def producer(tensor):
    """The layer that made a Keras tensor."""
    return tensor._keras_history.operation


def inputs_of(layer) -> list:
    """The tensors `layer` was called on (its first call)."""
    return list(layer._inbound_nodes[0].input_tensors)


def consumers(layer) -> list:
    """The layers that take `layer`'s output."""
    return [node.operation for node in layer._outbound_nodes]


def _distances(tensor) -> dict:
    """{id(layer): layers between `tensor` and that ancestor layer's output} over every
    ancestor (breadth first: the shortest path)."""
    out, frontier, d = {}, [producer(tensor)], 0
    while frontier:
        nxt = []
        for layer in frontier:
            if id(layer) in out:
                continue
            out[id(layer)] = d
            if layer._inbound_nodes:
                nxt += [producer(t) for t in inputs_of(layer)]
        frontier, d = nxt, d + 1
    return out


def branch_index(add) -> int:
    """Which of a two-input `Add`'s inputs is the branch F (the other is the shortcut)."""
    a, b = (_distances(t) for t in inputs_of(add))
    common = set(a) & set(b)
    if not common:
        raise UserError(f"{add.name}: its two inputs share no ancestor; it joins no residual unit")
    da, db = min(a[c] for c in common), min(b[c] for c in common)
    if da == db:
        raise UserError(
            f"{add.name}: its two inputs are equally far from their common input, so its "
            "shortcut cannot be told from its branch; pass the Add layers of the units to "
            "gate (adds=[...]) or leave this one out"
        )
    return 0 if da > db else 1


def _two_input_adds(model) -> list:
    import keras

    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Add)
        and layer._inbound_nodes
        and len(inputs_of(layer)) == 2
    ]


def project_units(model) -> list[Unit]:
    """This project's units: the `Add` layers `group{g}_block{b}_add`."""
    units = []
    for add in _two_input_adds(model):
        m = _PROJECT_ADD.match(add.name)
        if m:
            bid = block_id(int(m.group(1)), int(m.group(2)))
            units.append(Unit(bid, bid, add.name, branch_index(add)))
    return units


def resnet_v2_units(model) -> list[Unit]:
    """Keras applications' ResNetV2 units: the `Add` layers `conv{s}_block{b}_out`."""
    units = []
    for add in _two_input_adds(model):
        m = _RESNET_V2_ADD.match(add.name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            name = add.name[: -len("_out")]
            units.append(Unit(block_id(stage - 2, block - 1), name, add.name, branch_index(add)))
    return units


def add_units(model, adds=None) -> list[Unit]:
    """The units of any functional model: every two-input `Add` (or those named in `adds`),
    in network order; group g+1 starts at a unit whose output shape differs from its input's."""
    found = _two_input_adds(model)
    if adds is not None:
        by_name = {a.name: a for a in found}
        unknown = [n for n in adds if n not in by_name]
        if unknown:
            raise UserError(
                f"no two-input Add layer named {', '.join(map(repr, unknown))} in "
                f"{model.name}: name the Add layers that join a shortcut and a branch"
            )
        wanted = set(adds)
        found = [a for a in found if a.name in wanted]
    units, group, block = [], 0, 0
    for add in found:
        branch = branch_index(add)
        shortcut = inputs_of(add)[1 - branch]
        unit_input = _unit_input(shortcut)
        if units and tuple(unit_input.shape[1:]) != tuple(add.output.shape[1:]):
            group, block = group + 1, 0
        units.append(Unit(block_id(group, block), add.name, add.name, branch))
        block += 1
    return units


def _unit_input(shortcut):
    """The tensor a unit's shortcut starts from: the shortcut itself, or the input of its
    one-layer path (projection, pooling)."""
    layer = producer(shortcut)
    while layer._inbound_nodes and len(inputs_of(layer)) == 1 and len(consumers(layer)) == 1:
        shortcut = inputs_of(layer)[0]
        layer = producer(shortcut)
    return shortcut


#: The locators `locate_units` tries, in order: the first that finds units is the net's.
LOCATORS = {"project": project_units, "keras-resnet-v2": resnet_v2_units, "add": add_units}


def locate_units(model, adds=None, locator: str | None = None) -> list[Unit]:
    """The residual units of `model`: by the named locator, or the first of `LOCATORS` that
    finds any (`adds`: the `Add` layers to take, for the general locator)."""
    if locator is not None and locator not in LOCATORS:
        raise UserError(f"locator must be one of {', '.join(LOCATORS)}, not {locator!r}")
    if adds is not None:
        units = add_units(model, adds)
    elif locator is not None:
        units = LOCATORS[locator](model)
    else:
        units = next((u for find in LOCATORS.values() if (u := find(model))), [])
    if not units:
        raise UserError(
            f"{model.name}: no residual unit found (no two-input Add joining a shortcut and "
            "a branch); pass adds=[...] with the names of its Add layers"
        )
    return units
