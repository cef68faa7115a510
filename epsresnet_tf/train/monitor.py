"""What is monitored (docs/semantics.md §8), read from graph variables at epoch end.

The gates keep their own statistics inside the graph (every gate `discarded_ema`; the
other fields are its kind's `GateKind.monitor`: ε: `gate_value`, `response_max`,
`response_mean`; k: k), updated on every training step by the step itself. Nothing here runs per step: `gate_snapshot` reads
those variables once per epoch (paper Fig. 1's strip of them is `train/dashboard.py`'s).
"""

import numpy as np
import tensorflow as tf

from epsresnet_tf.gates import kind_of
from epsresnet_tf.layers import gate_layers
from epsresnet_tf.naming import block_of_layer_name, split_layer_name
from epsresnet_tf.transform import branch_layers


def discarded_now(layer):
    """A gate's is_discarded in the training step just run, as a float32 tensor in [0, 1]
    (its kind's `discarded_now`: 1 − T for an ε-gate, 1 where g(k) = 0 for a k-gate).
    Summed over blocks it is the per-step discarded count that the adaptive reset's moving
    average follows (docs/semantics.md §7)."""
    return kind_of(layer).discarded_now(layer)


def gate_snapshot(net):
    """Per-block monitor values: {"blocks": {id: {...}}, "blocks_discarded_sum" (the sum
    of the per-block averages, for dashboards; not what the reset reads), "num_blocks"}.
    Under tf.distribute the variables hold the mean over replicas (their aggregation is
    "mean"). All the variables are read in one graph call (ResNet-110: 216 of them)."""
    fields = {}
    for layer in gate_layers(net):
        entry = {"discarded": layer.discarded_ema, **kind_of(layer).monitor(layer)}
        fields[block_of_layer_name(layer.name) or layer.name] = entry
    flat = [v for entry in fields.values() for v in entry.values()]
    reader = getattr(net, "_monitor_reader", None)  # built once per net: the same variables
    if reader is None or reader.size != len(flat):
        reader = net._monitor_reader = VariableReader(flat)
    values = iter(reader())
    blocks = {b: {f: float(next(values)) for f in entry} for b, entry in fields.items()}
    return {
        "blocks": blocks,
        "num_blocks": len(blocks),
        "blocks_discarded_sum": sum(e["discarded"] for e in blocks.values()),
    }


class VariableReader:
    """Reads a fixed list of variables in one graph call that captures them: passed as
    arguments, each would cost the call ~50 µs of argument handling."""

    def __init__(self, variables):
        handles = [getattr(v, "value", v) for v in variables]
        self.size = len(handles)
        self.read = tf.function(lambda: [tf.identity(h) for h in handles])

    def __call__(self) -> list[np.ndarray]:
        return [t.numpy() for t in self.read()] if self.size else []


def block_kernels(net):
    """{block id: [(short name, variable)]} of the conv/dense kernels inside each block,
    for the per-block histograms (the weight collapse of paper Fig. 5). A net whose layers
    are not named by block (a Keras application) has its blocks read from the graph."""
    out = {}
    for v in net.trainable_variables:
        path = getattr(v, "path", v.name)
        if not path.endswith("kernel"):
            continue
        parts = split_layer_name(path)
        if parts:
            bid = block_of_layer_name(path)
            out.setdefault(bid, []).append((parts[2].replace("/", "_"), v))
    if out or not gate_layers(net):
        return out
    return {
        bid: [(layer.name, layer.kernel) for layer in layers if hasattr(layer, "kernel")]
        for bid, layers in branch_layers(net).items()
    }
