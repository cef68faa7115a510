"""`epsresnet` command line: thin — parse, call, print.

Each subcommand lives beside the code it drives and exposes `register(subparsers)`;
this module only collects them and turns user mistakes into one-line errors.
"""

import argparse
import importlib
import os
import sys
import tempfile

from epsresnet_tf.errors import UserError

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "epsresnet_tf.models.describe",
    "epsresnet_tf.data.check",
    "epsresnet_tf.train.run",
    "epsresnet_tf.compress",
    "epsresnet_tf.evaluate",
    "epsresnet_tf.report",
    "epsresnet_tf.sweep",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line like our other errors: the cause and where
    the valid forms are (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def import_quietly(names):
    """Import the subcommand modules with file descriptor 2 held back: TensorFlow's C++
    start-up notices (oneDNN, CUDA) are written there before TF_CPP_MIN_LOG_LEVEL takes
    effect and would bury a one-line error. A failed import replays what was held back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            return [importlib.import_module(name) for name in names]
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="epsresnet",
        description="epsilon-ResNet: train deep ResNets that discard their own blocks, "
        "then compress them into smaller standard ResNets.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in import_quietly(COMMAND_MODULES):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = "epsresnet"
    try:
        args = build_parser().parse_args(argv)
        command = f"epsresnet {args.command}"
        result = args.func(args)
    except UserError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a fault: one line, the shell's 128 + SIGINT. The
        # commands write their outputs beside the old ones and swap them in last, so nothing
        # half-written is left to warn about.
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
