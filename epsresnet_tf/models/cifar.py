"""Pre-activation ResNets for CIFAR/SVHN (He et al. 2016; docs/semantics.md §2): depth 6n+2 basic,
9n+2 bottleneck; 3 groups at 32², 16², 8² with 16, 32, 64 (×4 for bottleneck) channels."""

from epsresnet_tf import blocks
from epsresnet_tf.models.common import image_input

WIDTHS = (16, 32, 64)


def cifar_resnet(
    blocks_per_group, config, *, bottleneck, input_shape=(32, 32, 3), name=None, first_removed=()
):
    factory = blocks.LayerFactory(config)
    inputs, x = image_input(input_shape, config.data_format)
    x = factory.conv(16, 3, name="stem_conv")(x)
    x = factory.bn_relu(x, "stem_")
    # Basic nets: parameter-free option A where shapes change (the authors' code);
    # bottleneck nets: pre-activated 1x1 projections (He et al.).
    x, side = blocks.residual_stack(
        x,
        factory,
        blocks_per_group,
        WIDTHS,
        bottleneck=bottleneck,
        first_stride=1,
        dim_shortcut="projection" if bottleneck else "pool_pad",
        first_unit_activated=True,
        share_first=config.share_first,
        first_removed=first_removed,
    )
    return blocks.finish_model(
        inputs, x, side, factory, name or "cifar_resnet", activate=config.preact
    )


def cifar_basic(depth, config, input_shape=(32, 32, 3), blocks_per_group=None, first_removed=()):
    n = (depth - 2) // 6
    return cifar_resnet(
        blocks_per_group or [n] * 3,
        config,
        bottleneck=False,
        input_shape=input_shape,
        name=f"cifar_basic_{depth}",
        first_removed=first_removed,
    )


def cifar_bottleneck(
    depth, config, input_shape=(32, 32, 3), blocks_per_group=None, first_removed=()
):
    n = (depth - 2) // 9
    return cifar_resnet(
        blocks_per_group or [n] * 3,
        config,
        bottleneck=True,
        input_shape=input_shape,
        name=f"cifar_bottleneck_{depth}",
        first_removed=first_removed,
    )
