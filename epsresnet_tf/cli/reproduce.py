"""`epsresnet reproduce run|doc|gpu` (also `python -m epsresnet_tf.reproduce`):

run [PIECE…]   run the unfinished steps of the pieces (all: `make reproduce`'s order)
doc            write docs/REPRODUCTION.md and its figures from the run folders
gpu TABLE…     the full-scale runs of paper tables on a GPU host, and their tables
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from epsresnet_tf.cli.options import add_command, option
from epsresnet_tf.errors import UserError
from epsresnet_tf.reproduce import gpu, pieces
from epsresnet_tf.reproduce.doc import render, write_doc
from epsresnet_tf.reproduce.runner import run_steps
from epsresnet_tf.reproduce.steps import DEFAULT_DATA
from epsresnet_tf.runfolder import atomic_write_text

ROOT = "runs/repro"


def _data(pairs: list[str]) -> dict[str, str]:
    """--data NAME=PATH pairs over the defaults (steps.DEFAULT_DATA)."""
    data = dict(DEFAULT_DATA)
    for pair in pairs or ():
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data takes NAME=PATH (e.g. cifar10=../data), not {pair!r}")
        data[name] = path
    return data


def _run(args) -> int:
    summary = run_steps(pieces.steps_of(args.pieces), Path(args.root), _data(args.data))
    print(
        f"reproduce: {len(summary['ran'])} ran, {len(summary['skipped'])} already done, "
        f"{len(summary['failed'])} failed, {len(summary['waiting'])} waiting"
    )
    return 1 if summary["failed"] else 0


def _doc(args) -> int:
    if args.no_figures:  # the test fixture's expected text: tables only
        atomic_write_text(Path(args.doc), render(Path(args.root), _data(args.data)))
        print(f"wrote {args.doc}")
        return 0
    written = write_doc(Path(args.root), Path(args.doc), Path(args.img), _data(args.data))
    for path in written:
        print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add the `reproduce` subcommand (and its run/doc/gpu actions)."""
    parser = add_command(
        subparsers,
        "reproduce",
        help="run the papers' claims on this machine's data; write docs/REPRODUCTION.md",
        description=__doc__,
        func=lambda args: args.action_func(args),
        options=[],
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    root = option("--root", default=ROOT, help=f"parent of the run folders (default {ROOT})")
    data = option("--data", action="append", help="NAME=PATH: a dataset's folder (repeatable)")
    for name, func, help_text, extra in (
        ("run", _run, "run the unfinished steps", [option("pieces", nargs="*", help="piece keys")]),
        (
            "doc",
            _doc,
            "write the document and figures",
            [
                option("--doc", default="docs/REPRODUCTION.md", help="the document"),
                option("--img", default="docs/img", help="folder of its figures"),
                option("--no-figures", action="store_true", help="tables only, no figures"),
            ],
        ),
    ):
        sub = add_command(
            actions,
            name,
            help=help_text,
            description=help_text,
            func=func,
            options=[root, data, *extra],
        )
        sub.set_defaults(action_func=func)

    _register_gpu(actions)


def _register_gpu(actions) -> None:
    sub = add_command(
        actions,
        "gpu",
        help="full-scale runs of paper tables (GPU host)",
        description=gpu.__doc__,
        func=gpu.run_tables,
        options=[
            option("tables", nargs="*", help="table keys (--list)"),
            option("--list", action="store_true", help="list the tables and their recipes"),
            option("--data-dir", default="data", help="root of the full datasets"),
            option("--gpus", type=int, default=None, help="GPUs per run"),
            option(
                "--root", default=gpu.GPU_ROOT, help=f"parent of the run folders ({gpu.GPU_ROOT})"
            ),
        ],
    )
    sub.set_defaults(action_func=gpu.run_tables)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="epsresnet")
    commands = parser.add_subparsers(dest="command")
    register(commands)
    args = parser.parse_args(["reproduce", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.action_func(args) or 0)
    except UserError as err:
        print(f"epsresnet reproduce: error: {err}", file=sys.stderr)
        return 2
