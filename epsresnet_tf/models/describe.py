"""Model statistics (parameters, conv layers, blocks, MACs) and `epsresnet describe`.

Keras is imported inside the functions: `register` runs for every `epsresnet` command.
"""

import numpy as np

from epsresnet_tf.errors import UserError
from epsresnet_tf.naming import block_of_layer_name
from epsresnet_tf.units import locate_units


def _size(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def calls(layer, model):
    """(input shape, output shape) of each call of `layer` inside `model`; a shared layer
    is called several times."""
    own = set(id(node) for depth_nodes in model._nodes_by_depth.values() for node in depth_nodes)
    for node in layer._inbound_nodes:
        if id(node) in own:
            yield node.input_tensors[0].shape, node.output_tensors[0].shape


def _conv_macs(kernel, out_shape, data_format):
    spatial = out_shape[2:] if data_format == "channels_first" else out_shape[1:-1]
    # kernel: (kh, kw, in, out); one MAC per kernel weight per output position.
    return int(np.prod(spatial)) * int(np.prod(kernel.shape))


def count_macs(model):
    """Forward multiply-accumulates per image, summed over every call of every conv and
    dense kernel (a shared kernel counts at each use)."""
    import keras

    from epsresnet_tf import layers as L

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            for _, out_shape in calls(layer, model):
                total += _conv_macs(layer.kernel, out_shape, layer.data_format)
        elif isinstance(layer, keras.layers.Dense):
            for _, _ in calls(layer, model):
                total += int(np.prod(layer.kernel.shape))
        elif isinstance(layer, L.SigmoidShortcutGate):
            for _in_shapes, out_shape in calls(layer, model):
                total += _conv_macs(layer.gate_conv.kernel, out_shape, layer.data_format)
    return total


def count_conv_layers(model):
    """Independent conv kernels (a shared kernel once), the paper's "layers" minus the FC."""
    import keras

    from epsresnet_tf import layers as L

    kernels = {id(layer.kernel) for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    kernels |= {
        id(layer.gate_conv.kernel)
        for layer in model.layers
        if isinstance(layer, L.SigmoidShortcutGate)
    }
    return len(kernels)


def count_blocks(model):
    """Residual units (or plain gated layers) — every layer named `group{g}_block{b}_…`
    belongs to one; in a net without those names (a Keras application, a user's own
    model), the units its graph's locators find (units.py)."""
    named = len({block_of_layer_name(layer.name) for layer in model.layers} - {None})
    if named:
        return named
    try:
        return len(locate_units(model))
    except UserError:  # no residual unit in it
        return 0


def _without_batchnorm(weights, model) -> list:
    import keras

    bn = {
        id(w)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.trainable_weights
    }
    return [w for w in weights if id(w) not in bn]


def model_stats(model):
    from epsresnet_tf import layers as L

    return {
        "name": model.name,
        "params": _size(model.weights),
        "trainable_params": _size(model.trainable_weights),
        # papers differ on counting BatchNorm's γ and β: He et al.'s ResNet-1001 "10.2M"
        # leaves them out (docs/REPRODUCTION.md, parameter tables)
        "trainable_params_without_bn": _size(_without_batchnorm(model.trainable_weights, model)),
        "conv_layers": count_conv_layers(model),
        "blocks": count_blocks(model),
        "gates": len(L.gate_layers(model)),
        "macs": count_macs(model),
    }
