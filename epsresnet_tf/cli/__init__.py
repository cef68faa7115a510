"""`epsresnet` command line: thin — parse, call, print.

Each subcommand is a module of this package (`cli/<command>.py`): its options as data
(`cli/options.py`), `register(subparsers)` and what it prints; the domain modules it
calls (compress, evaluate, report, …) never import the CLI. This module collects them and
turns user mistakes into one-line errors. Building the
parser imports no TensorFlow (the commands import it when they run), so `--help`,
`--version` and `train --list` answer at once.
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys

from epsresnet_tf import __version__
from epsresnet_tf.cli.options import VERBOSE
from epsresnet_tf.errors import UserError
from epsresnet_tf.heldstderr import held_stderr

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = tuple(
    f"epsresnet_tf.cli.{name}"
    for name in (
        "describe",
        "data",
        "train",
        "compress",
        "evaluate",
        "report",
        "sweep",
        "reproduce",
    )
)

#: Set (to anything but "" or "0") to see TensorFlow's own log lines, as `--verbose` does.
VERBOSE_ENV = "EPSRESNET_VERBOSE"
DISTRIBUTION = "epsresnet_tf"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line like our other errors: the cause and where
    the valid forms are (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed distribution's version (its metadata); a source checkout that was
    never installed has only the package's own `__version__`, which setup.cfg reads."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return __version__


class VersionAction(argparse.Action):
    """`--version`: argparse's, but the metadata is read only when it is asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help="print the version"):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {version()}")
        parser.exit()


# Plain classes, not importlib.abc's: the import protocol needs only the methods, and
# importlib.abc would import importlib.resources for every `epsresnet --help`.
class _HeldStderrLoader:
    """Runs `loader`'s import with file descriptor 2 held back (a failed import replays
    it), then hands the module its own loader again."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with held_stderr():
            self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        from absl import logging as absl_logging  # TensorFlow's dependency: loaded now

        absl_logging.set_verbosity(absl_logging.ERROR)


class QuietTensorFlow:
    """Whichever command first imports TensorFlow (directly or through Keras), imports it
    quietly: its C++ start-up notices (oneDNN, "Could not find cuda drivers") are written to
    file descriptor 2 before TF_CPP_MIN_LOG_LEVEL takes effect, and would bury a one-line
    error or a result; the module itself is the normal one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and the lookup below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldStderrLoader(spec.loader)
        return spec


def quiet_tensorflow(verbose: bool) -> None:
    """Keep what is not the user's business off stderr, before TensorFlow is imported:
    C++ notices and errors (a CPU machine's "failed call to cuInit"), TensorFlow's Python
    warnings (e.g. tf.function retracing) and absl's. `verbose` lets all of them through.
    A TF_CPP_MIN_LOG_LEVEL the user set is kept."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, QuietTensorFlow) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, QuietTensorFlow())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="epsresnet",
        description="epsilon-ResNet: train deep ResNets that discard their own blocks, "
        "then compress them into smaller standard ResNets.",
        epilog=f"TensorFlow's own log lines are hidden; --verbose or {VERBOSE_ENV}=1 shows them.",
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE[1]["help"])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "epsresnet"
    try:
        args = build_parser().parse_args(argv)
        command = f"epsresnet {args.command}"
        quiet_tensorflow(args.verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0"))
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
