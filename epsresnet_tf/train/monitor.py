"""What is monitored (docs/semantics.md §8), read from graph variables at epoch end.

The gates keep their own statistics inside the graph (EpsilonGate: `discarded_ema`,
`gate_value`, `response_max`, `response_mean`; ResidualGate: `discarded_ema`, k), updated on
every training step by the step itself. Nothing here runs per step: `gate_snapshot` reads
those variables once per epoch and `discard_strip` draws paper Fig. 1's strip from the
per-epoch history.
"""
import re

import numpy as np

from epsresnet_tf.blocks import block_id
from epsresnet_tf.layers import EpsilonGate, gate_layers

_GATE_NAME = re.compile(r"group(\d+)_block(\d+)_")


def gate_block_id(layer):
    """`group{g}/block{b}` of a gate layer, from its `group{g}_block{b}_…` name."""
    m = _GATE_NAME.match(layer.name)
    return block_id(int(m.group(1)), int(m.group(2))) if m else layer.name


def _value(v):
    return float(np.asarray(v.numpy() if hasattr(v, "numpy") else v))


def discarded_now(layer):
    """A gate's is_discarded in the training step just run, as a float32 tensor in [0, 1]:
    1 − T for an ε-gate (the mean over images or gate groups where T is not one number),
    1 where g(k) = 0 for a k-gate. Summed over blocks it is the per-step discarded count
    that the adaptive reset's moving average follows (docs/semantics.md §7)."""
    from keras import ops
    if isinstance(layer, EpsilonGate):
        return 1.0 - ops.convert_to_tensor(layer.gate_value)
    return ops.cast(ops.less_equal(layer.k, 0.0), "float32")


def gate_snapshot(net):
    """Per-block monitor values: {"blocks": {id: {...}}, "blocks_discarded_sum" (the sum
    of the per-block averages, for dashboards; not what the reset reads), "num_blocks"}.
    Under tf.distribute the variables hold the mean over replicas (their aggregation is
    "mean")."""
    blocks = {}
    for layer in gate_layers(net):
        entry = {"discarded": _value(layer.discarded_ema)}
        if isinstance(layer, EpsilonGate):
            entry.update(gate=_value(layer.gate_value), response_max=_value(layer.response_max),
                         response_mean=_value(layer.response_mean))
        else:
            entry.update(k=_value(layer.k))
        blocks[gate_block_id(layer)] = entry
    return {"blocks": blocks, "num_blocks": len(blocks),
            "blocks_discarded_sum": sum(e["discarded"] for e in blocks.values())}


def block_kernels(net):
    """{block id: [(short name, variable)]} of the conv/dense kernels inside each block,
    for the per-block histograms (the weight collapse of paper Fig. 5)."""
    out = {}
    for v in net.trainable_variables:
        path = getattr(v, "path", v.name)
        if not path.endswith("kernel"):
            continue
        m = _GATE_NAME.match(path)
        if m:
            bid = block_id(int(m.group(1)), int(m.group(2)))
            out.setdefault(bid, []).append((path[m.end():].replace("/", "_"), v))
    return out


def discard_strip(rows, cell=4):
    """Paper Fig. 1's strip as a uint8 image (H, W, 1): one column per block, one row per
    epoch (latest at the bottom); black = discarded (EMA of 1-T near 1), white = kept."""
    if not rows or not rows[0].get("blocks"):
        return np.zeros((cell, cell, 1), np.uint8)
    ids = list(rows[0]["blocks"])
    grid = np.array([[r["blocks"][b]["discarded"] for b in ids] for r in rows], np.float32)
    img = (255 * (1.0 - np.clip(grid, 0, 1))).astype(np.uint8)
    img = np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)
    return img[:, :, None]
