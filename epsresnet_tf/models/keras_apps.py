"""Keras applications' pre-activation ResNets (`keras:ResNet50V2`, `…101V2`, `…152V2`) as a
model family: Keras's own graph, gated by the transform (docs/keras-models.md). Built with
random weights (nothing is downloaded); `train --init-from-keras FILE` starts from a
pretrained one. Compression removes units from this graph, never rebuilds it by name."""

from epsresnet_tf import blocks
from epsresnet_tf.transform import gate_net, group_counts
from epsresnet_tf.units import locate_units

#: depth -> the keras.applications constructor.
RESNET_V2 = {50: "ResNet50V2", 101: "ResNet101V2", 152: "ResNet152V2"}
#: NetConfig fields this project's builders read and Keras's graph has no place for, with
#: the value that means "as Keras builds it".
_FIXED = {
    "share": False,
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
    gated = gate_net(net, config, locator="keras-resnet-v2", weight_decay=config.weight_decay)
    return with_side_head(gated, config) if config.side_head else gated


def with_side_head(net, config):
    """`net` with this project's side head (BN-ReLU, pool, FC; docs/semantics.md §5) after
    the unit the ImageNet script puts it after (blocks.imagenet_side_head_index: the
    first unit of stage 4 in ResNet50V2), outputs {"logits", "side_logits"} as this
    project's nets have. Compression drops it with the rest of the training-only parts."""
    import keras

    units = locate_units(net, locator="keras-resnet-v2")
    counts = group_counts([u.block for u in units])
    at = blocks.imagenet_side_head_index([counts[g] for g in sorted(counts)])
    if at is None:
        raise ValueError("this net has no unit for the side head: set side_head false")
    side = blocks.classifier(
        net.get_layer(units[at].add).output, blocks.LayerFactory(config), "side_head"
    )
    return keras.Model(net.inputs, {"logits": net.outputs[0], "side_logits": side}, name=net.name)
