"""Gate kinds: the registry (`get_gate`, `register_gate`, …) and the built-in kinds, one
module each (`eps`: epsilon-ResNet's ε gate; `k`: Savarese et al.'s residual gate)."""

from epsresnet_tf.gates import eps, k  # noqa: F401  (registers the built-in kinds)
from epsresnet_tf.gates.base import (
    BlockVerdict,
    Fold,
    GateKind,
    NoGate,
    ScalarGateKind,
    to_float,
)
from epsresnet_tf.gates.registry import (
    all_settings,
    gate_by_block,
    gate_choices,
    gate_kinds,
    get_gate,
    kind_of,
    read_hyper,
    register_gate,
    set_hyper,
    unregister_gate,
)

__all__ = [
    "BlockVerdict",
    "Fold",
    "GateKind",
    "NoGate",
    "ScalarGateKind",
    "all_settings",
    "gate_by_block",
    "gate_choices",
    "gate_kinds",
    "get_gate",
    "kind_of",
    "read_hyper",
    "register_gate",
    "set_hyper",
    "to_float",
    "unregister_gate",
]
