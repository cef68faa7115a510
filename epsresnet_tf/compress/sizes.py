"""Sizes of a net's prediction path: parameters, bytes, layers, blocks, MACs."""

from typing import TYPE_CHECKING, Any

import numpy as np

from epsresnet_tf.models.describe import calls, model_stats

if TYPE_CHECKING:
    import keras


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
            layers += sum(1 for _ in calls(layer, model))
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
