"""Block and layer names: the one place that writes them and parses them back.

A residual unit is `group{g}/block{b}` in history keys, TensorBoard tags and certificates
(its block id); Keras forbids '/' in layer names, so its layers are `group{g}_block{b}_…`.
What stays of a group's removed first unit is `group{g}_transition_…`; a stage's shared
kernel is `group{g}_shared_…`.
"""

import re
from collections.abc import Iterable

from epsresnet_tf.errors import UserError

_ID = re.compile(r"^group(\d+)/block(\d+)$")
_LAYER = re.compile(r"^group(\d+)_block(\d+)_(.*)$", re.S)
_TRANSITION = re.compile(r"^group(\d+)_transition_(.*)$", re.S)


def block_id(group: int, block: int) -> str:
    """Canonical block name used in history keys, TensorBoard tags and certificates."""
    return f"group{group}/block{block}"


def layer_prefix(group: int, block: int) -> str:
    """Prefix of a unit's layer names: `group{g}_block{b}_`."""
    return f"group{group}_block{block}_"


def transition_prefix(group: int) -> str:
    """Prefix of the shortcut path left where a group's first unit was removed."""
    return f"group{group}_transition_"


def shared_prefix(group: int) -> str:
    """Prefix of a stage's shared layers (the shared 3x3 kernel)."""
    return f"group{group}_shared_"


def parse_block_id(bid: str) -> tuple[int, int]:
    """(group, block) of `group{g}/block{b}`; UserError otherwise."""
    m = _ID.match(bid)
    if not m:
        raise UserError(f"bad block id {bid!r}: use group<g>/block<b>, e.g. group1/block0")
    return int(m.group(1)), int(m.group(2))


def sort_block_ids(ids: Iterable[str]) -> list[str]:
    """Block ids in network order (group, then block; not string order)."""
    return sorted(ids, key=parse_block_id)


def split_layer_name(name: str) -> tuple[int, int, str] | None:
    """(group, block, rest) of a unit's layer (or variable path) `group{g}_block{b}_rest`;
    None for layers outside units."""
    m = _LAYER.match(name)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


def block_of_layer_name(name: str) -> str | None:
    """The block id a layer (or variable path) belongs to; None outside units."""
    parts = split_layer_name(name)
    return block_id(parts[0], parts[1]) if parts else None


def split_transition_name(name: str) -> tuple[int, str] | None:
    """(group, rest) of a transition layer `group{g}_transition_rest`; None otherwise."""
    m = _TRANSITION.match(name)
    return (int(m.group(1)), m.group(2)) if m else None
