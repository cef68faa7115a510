"""The gates paper's fully connected MNIST nets (Savarese et al.; docs/semantics.md §3): a 50-unit
linear layer, then d layers of 50 units (plain: Dense-BN-ReLU; residual: units of two
such layers), then the classifier."""

import keras

from epsresnet_tf import blocks
from epsresnet_tf.gates import get_gate
from epsresnet_tf.naming import layer_prefix

UNITS = 50


def _dense_bn_relu(x, factory, prefix):
    x = factory.dense(UNITS, name=prefix + "dense")(x)
    x = keras.layers.BatchNormalization(
        momentum=factory.config.bn_momentum, epsilon=factory.config.bn_epsilon, name=prefix + "bn"
    )(x)
    return keras.layers.ReLU(name=prefix + "relu")(x)


def mnist_fc(
    depth, config, *, residual, input_shape=(28, 28, 1), blocks_per_group=None, first_removed=()
):
    if config.share:
        raise ValueError("shared 3x3 kernels need a convolutional net; mnist nets have none")
    kind = get_gate(config.gate)  # between plain layers: its `plain_merge` (ε: refused)
    factory = blocks.LayerFactory(config)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = factory.dense(UNITS, name="stem_dense")(x)
    units = blocks_per_group[0] if blocks_per_group else (depth // 2 if residual else depth)
    side_at = blocks.side_head_index([units]) if config.side_head else None
    side = None
    for b in range(units):
        p = layer_prefix(0, b)
        if residual:
            f = _dense_bn_relu(_dense_bn_relu(x, factory, p + "1_"), factory, p + "2_")
            x = blocks.merge_branch(f, x, config, p)
        else:
            f = _dense_bn_relu(x, factory, p + "1_")
            x = kind.plain_merge(f, x, config, p)
        if b == side_at:
            side = factory.dense(config.classes, name="side_head_fc", dtype="float32")(x)
    logits = factory.dense(config.classes, name="logits", dtype="float32")(x)
    outputs = {"logits": logits, "side_logits": side} if side is not None else logits
    name = f"mnist_{'res' if residual else 'plain'}_{depth}"
    return keras.Model(inputs, outputs, name=name)
