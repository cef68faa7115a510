"""Keras applications' pre-activation ResNets (`keras:ResNet50V2`, `…101V2`, `…152V2`) as a
model family: Keras's own graph, gated by the transform (docs/keras-models.md). Built with
random weights (nothing is downloaded); `train --init-from-keras FILE` starts from a
pretrained one. Compression removes units from this graph, never rebuilds it by name."""

from epsresnet_tf.transform import gate_net

#: depth -> the keras.applications constructor.
RESNET_V2 = {50: "ResNet50V2", 101: "ResNet101V2", 152: "ResNet152V2"}
#: NetConfig fields this project's builders read and Keras's graph has no place for, with
#: the value that means "as Keras builds it".
_FIXED = {
    "share": False,
    "side_head": False,
    "order": "full_preact",
    "shortcut": "identity",
    "dropout": 0.0,
    "data_format": "channels_last",
    "init": "he_fan_out",
}


def resnet_v2(depth, config, input_shape=(224, 224, 3), blocks_per_group=None, first_removed=()):
    """keras.applications.ResNet{depth}V2 with `config.classes` logits, every unit gated as
    `config` says, kernels decayed by `config.weight_decay`."""
    import keras

    for key, value in _FIXED.items():
        if getattr(config, key) != value:
            raise ValueError(
                f"{key}={getattr(config, key)!r} is an option of this project's nets; "
                f"keras:{RESNET_V2[depth]} is Keras's graph as it is: leave {key} at {value!r}"
            )
    if blocks_per_group is not None or first_removed:
        raise ValueError("compression removes units from the Keras graph; it is not rebuilt")
    build = getattr(keras.applications, RESNET_V2[depth])
    net = build(
        weights=None,
        input_shape=tuple(input_shape),
        classes=config.classes,
        classifier_activation=None,
    )
    return gate_net(net, config, locator="keras-resnet-v2", weight_decay=config.weight_decay)
