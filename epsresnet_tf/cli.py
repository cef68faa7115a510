"""`epsresnet` command line: thin — parse, call, print.

Each subcommand lives beside the code it drives and exposes `register(subparsers)`;
this module only collects them and turns user mistakes into one-line errors.
"""
import argparse
import importlib
import os
import sys

from epsresnet_tf.errors import UserError

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "epsresnet_tf.models.describe",
    "epsresnet_tf.data.check",
    "epsresnet_tf.bench",
    "epsresnet_tf.train.run",
    "epsresnet_tf.compress",
    "epsresnet_tf.evaluate",
    "epsresnet_tf.report",
    "epsresnet_tf.sweep",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="epsresnet",
        description="epsilon-ResNet: train deep ResNets that discard their own blocks, "
                    "then compress them into smaller standard ResNets.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as err:
        print(f"epsresnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
