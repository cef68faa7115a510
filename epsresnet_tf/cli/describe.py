"""`epsresnet describe ARCH`: options and printing (epsresnet_tf.models.describe counts)."""

from tabulate import tabulate

from epsresnet_tf import jsonsafe
from epsresnet_tf.cli.options import JSON, add_command, option
from epsresnet_tf.gates import gate_choices
from epsresnet_tf.models.describe import model_stats


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
