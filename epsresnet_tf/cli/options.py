"""How a subcommand declares itself: its name, help, description and options as data
(flags and argparse keyword arguments), added by one function; `epsresnet_tf.cli` collects them."""

import argparse

from epsresnet_tf.data.readers import default_data_dir


def option(*flags, **kwargs):
    """One argparse argument as data: (flags, keyword arguments)."""
    return flags, kwargs


def data_dir(help="dataset root (default: $EPSRESNET_DATA or ./data)", from_run=False):
    """--data-dir, its default read when the parser is built (the running command's
    environment); `from_run`: no default, the command asks runfolder.run_data_dir (the run's own)."""
    return option("--data-dir", default=None if from_run else default_data_dir(), help=help)


def force(what):
    """--force: replace existing outputs (never silently)."""
    return option("--force", action="store_true", help=f"replace {what}")


JSON = option("--json", action="store_true", help="print one JSON object")

#: After the subcommand as well as before it (`epsresnet --verbose COMMAND`); SUPPRESS leaves
#: the top-level flag's value alone when it is not given here.
VERBOSE = option(
    "--verbose",
    action="store_true",
    default=argparse.SUPPRESS,
    help="show TensorFlow's own log lines (C++ notices, retracing warnings)",
)


def add_command(subparsers, name, *, help, description, func, options):
    """Add subcommand `name` with `options` ([(flags, kwargs)]) that runs `func(args)`."""
    parser = subparsers.add_parser(name, help=help, description=description)
    for flags, kwargs in [*options, VERBOSE]:
        parser.add_argument(*flags, **kwargs)
    parser.set_defaults(func=func)
    return parser
