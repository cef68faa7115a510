"""Pre-activation ResNets for ImageNet (tensorpack's preact ResNet; docs/semantics.md §2):
conv7x7/2 + BN-ReLU + maxpool 3x3/2 → 4 groups (64, 128, 256, 512) → BN-ReLU → GAP → FC."""

import keras

from epsresnet_tf import blocks
from epsresnet_tf.models.common import image_input

#: depth → (blocks per group, bottleneck)
DEPTHS = {
    18: ([2, 2, 2, 2], False),
    34: ([3, 4, 6, 3], False),
    50: ([3, 4, 6, 3], True),
    101: ([3, 4, 23, 3], True),
    152: ([3, 8, 36, 3], True),
    200: ([3, 24, 36, 3], True),
}
WIDTHS = (64, 128, 256, 512)


def imagenet_resnet(
    depth, config, input_shape=(224, 224, 3), blocks_per_group=None, first_removed=()
):
    default_blocks, bottleneck = DEPTHS[depth]
    blocks_per_group = blocks_per_group or default_blocks
    factory = blocks.LayerFactory(config)
    inputs, x = image_input(input_shape, config.data_format)
    x = factory.conv(64, 7, 2, name="stem_conv")(x)
    x = factory.bn_relu(x, "stem_")
    x = keras.layers.MaxPooling2D(
        3, 2, padding="same", data_format=config.data_format, name="stem_pool"
    )(x)
    x, side = blocks.residual_stack(
        x,
        factory,
        blocks_per_group,
        WIDTHS,
        bottleneck=bottleneck,
        first_stride=1,
        dim_shortcut="projection",
        first_unit_activated=True,
        share_first=config.share_first,
        first_removed=first_removed,
        side_head_at=blocks.imagenet_side_head_index,
    )
    return blocks.finish_model(
        inputs, x, side, factory, f"imagenet_resnet_{depth}", activate=config.preact
    )
