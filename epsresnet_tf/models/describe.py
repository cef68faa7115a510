"""Model statistics (parameters, conv layers, blocks, MACs) and `epsresnet describe`.

Keras is imported inside the functions: `register` runs for every `epsresnet` command.
"""

import numpy as np
from tabulate import tabulate

from epsresnet_tf import jsonsafe
from epsresnet_tf.commands import JSON, add_command, option
from epsresnet_tf.gates import gate_choices
from epsresnet_tf.naming import block_of_layer_name


def _size(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def _calls(layer, model):
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
            for _, out_shape in _calls(layer, model):
                total += _conv_macs(layer.kernel, out_shape, layer.data_format)
        elif isinstance(layer, keras.layers.Dense):
            for _, _ in _calls(layer, model):
                total += int(np.prod(layer.kernel.shape))
        elif isinstance(layer, L.SigmoidShortcutGate):
            for _in_shapes, out_shape in _calls(layer, model):
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
    belongs to one."""
    return len({block_of_layer_name(layer.name) for layer in model.layers} - {None})


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


def describe(args):

    from epsresnet_tf.models.registry import build_model

    options = dict(gate=args.gate, share=args.share, side_head=args.side_head)
    if args.epsilon is not None:
        options["epsilon"] = args.epsilon
    model = build_model(args.arch, classes=args.classes, **options)
    stats = model_stats(model)
    stats["arch"] = args.arch
    if args.json:
        print(jsonsafe.dumps(stats))
    else:
        rows = [
            (key, f"{value:,}" if isinstance(value, int) else value) for key, value in stats.items()
        ]
        print(tabulate(rows, headers=["", args.arch], tablefmt="simple"))


def register(subparsers):
    """Add the `describe` subcommand."""
    add_command(
        subparsers,
        "describe",
        help="parameters, conv layers, blocks and MACs of an architecture",
        description="Build an architecture by name (e.g. cifar-basic-110, "
        "cifar-bottleneck-164, imagenet-152, wrn-28-10, mnist-res-50) and "
        "print its size.",
        func=describe,
        options=[
            option("arch", help="architecture name, e.g. cifar-basic-110"),
            option(
                "--classes",
                type=int,
                default=None,
                help="output classes (default: the family's: 10, or 1000 for imagenet)",
            ),
            option(
                "--gate",
                choices=gate_choices(),
                default="none",
                help="residual gate: none, eps (epsilon-ResNet) or k (Savarese et al.)",
            ),
            option("--epsilon", type=float, default=None, help="epsilon of the eps gate"),
            option(
                "--share", action="store_true", help="share each stage's 3x3 kernel (ShaResNet)"
            ),
            option(
                "--side-head",
                action="store_true",
                help="add the middle side-supervision head (epsilon-ResNet)",
            ),
            JSON,
        ],
    )
