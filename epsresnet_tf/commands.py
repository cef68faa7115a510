"""How a subcommand declares itself: its name, help, description and options as data
(flags and argparse keyword arguments), added by one function; `cli.py` collects them."""

import os


def option(*flags, **kwargs):
    """One argparse argument as data: (flags, keyword arguments)."""
    return flags, kwargs


def data_dir(help="dataset root (default: $EPSRESNET_DATA or ./data)"):
    """--data-dir, its default read when the parser is built (the running command's
    environment)."""
    return option("--data-dir", default=os.environ.get("EPSRESNET_DATA", "data"), help=help)


def force(what):
    """--force: replace existing outputs (never silently)."""
    return option("--force", action="store_true", help=f"replace {what}")


JSON = option("--json", action="store_true", help="print one JSON object")


def add_command(subparsers, name, *, help, description, func, options):
    """Add subcommand `name` with `options` ([(flags, kwargs)]) that runs `func(args)`."""
    parser = subparsers.add_parser(name, help=help, description=description)
    for flags, kwargs in options:
        parser.add_argument(*flags, **kwargs)
    parser.set_defaults(func=func)
    return parser
