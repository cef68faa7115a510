"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis; used by the gates and sharing papers):
(d-4)/6 basic pre-activation units per group, widths 16k, 32k, 64k, 1x1 projections where
shapes change, optional dropout between the two convs (docs/semantics.md §2)."""

from epsresnet_tf import blocks
from epsresnet_tf.models.common import image_input


def wide_resnet(
    depth, width, config, input_shape=(32, 32, 3), blocks_per_group=None, first_removed=()
):
    n = (depth - 4) // 6
    factory = blocks.LayerFactory(config)
    inputs, x = image_input(input_shape, config.data_format)
    x = factory.conv(16, 3, name="stem_conv")(x)
    x = factory.bn_relu(x, "stem_")
    x, side = blocks.residual_stack(
        x,
        factory,
        blocks_per_group or [n] * 3,
        [16 * width, 32 * width, 64 * width],
        bottleneck=False,
        first_stride=1,
        dim_shortcut="projection",
        first_unit_activated=True,
        share_first=config.share_first,
        first_removed=first_removed,
    )
    return blocks.finish_model(
        inputs, x, side, factory, f"wrn_{depth}_{width}", activate=config.preact
    )
