"""The gate registry: gate kind name → its `GateKind` entry (as timm's `get_attn(name)`).

A new gate kind is one module with a `GateKind` subclass decorated `@register_gate`, and
one import line in `epsresnet_tf/gates/__init__.py` (or, for a kind outside the package,
importing its module before building a net).
"""

from epsresnet_tf.gates.base import GateKind, NoGate, to_float
from epsresnet_tf.naming import block_of_layer_name

#: "none": no gate (plain residual units): the `NoGate` entry, not among the registered.
NONE = NoGate.name
_NO_GATE = NoGate()
_KINDS: dict[str, GateKind] = {}


def register_gate(cls: type[GateKind]) -> type[GateKind]:
    """Class decorator: register a GateKind subclass under its `name`."""
    if not cls.name or cls.name == NONE:
        raise ValueError(f"a gate kind needs a name other than {NONE!r}; got {cls.name!r}")
    if cls.name in _KINDS and type(_KINDS[cls.name]) is not cls:
        raise ValueError(f"gate kind {cls.name!r} is already registered")
    _KINDS[cls.name] = cls()
    return cls


def unregister_gate(name: str) -> None:
    """Forget a kind (tests that register one of their own)."""
    _KINDS.pop(name, None)


def gate_kinds() -> tuple[str, ...]:
    """Names of the registered kinds, in registration order."""
    return tuple(_KINDS)


def gate_choices() -> tuple[str, ...]:
    """What a config's "gate" may be: "none" and every registered kind."""
    return (NONE,) + gate_kinds()


def get_gate(name: str) -> GateKind:
    """The entry of a gate kind ("none": the no-gate entry); ValueError for an unknown name."""
    if name == NONE:
        return _NO_GATE
    if name not in _KINDS:
        raise ValueError(f"gate must be one of {', '.join(gate_choices())}; got {name!r}")
    return _KINDS[name]


def all_settings() -> dict[str, tuple[GateKind, object]]:
    """{config key: (the kind that owns it, its default)} over every registered kind."""
    return {k: (kind, v) for kind in _KINDS.values() for k, v in kind.settings.items()}


def kind_of(layer) -> GateKind:
    """The entry whose layer class `layer` is."""
    for kind in _KINDS.values():
        if isinstance(layer, kind.layer):
            return kind
    raise ValueError(f"{layer.name} ({type(layer).__name__}) is no registered gate kind's layer")


def gate_by_block(model) -> dict:
    """{block id: gate layer} of a model, in network order."""
    from epsresnet_tf.layers import gate_layers  # Keras: not at import (see base.LayerOf)

    out = {}
    for layer in gate_layers(model):
        bid = block_of_layer_name(layer.name)
        if bid is not None:
            out[bid] = layer
    return out


def set_hyper(layers, name: str, value: float) -> None:
    """Set hyper-parameter `name` (e.g. "epsilon") on every gate whose kind has it."""
    for layer in layers:
        if name in kind_of(layer).hyper_parameters:
            getattr(layer, name).assign(float(value))


def read_hyper(layers, name: str) -> float | None:
    """Hyper-parameter `name` of the first gate whose kind has it; None if none has."""
    for layer in layers:
        if name in kind_of(layer).hyper_parameters:
            return to_float(getattr(layer, name))
    return None
