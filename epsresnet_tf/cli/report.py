"""`epsresnet report RUN_DIR...`: options and printing (epsresnet_tf.report does the work)."""

import sys

from epsresnet_tf.cli.options import add_command, force, option
from epsresnet_tf.report import make_report


def _cli(args):
    result = make_report(args.run_dirs, args.out, args.force)
    for line in result["skipped"] + result["notes"]:
        print(line, file=sys.stderr)
    print(result["tables"])
    for name in result["files"]:
        if not name.endswith((".pdf", ".svg")):
            print(f"wrote {name}" + (" (and .pdf, .svg)" if name.endswith(".png") else ""))
    return 0


def register(subparsers):
    """Add the `report` subcommand."""
    add_command(
        subparsers,
        "report",
        help="tables and figures (paper Figs. 1, 5–10) from run folders",
        description="Tables (full vs reduced error, blocks, layers, params, memory) and "
        "figures as PNG, PDF and SVG (discarded ratio, kept per group, discard strip, weight "
        "collapse, removal curves, ε sweep) from one or more run folders. Paths that are not "
        "run folders are skipped. Running it again refreshes the report (your own files in "
        "the report folder stay).",
        func=_cli,
        options=[
            option(
                "run_dirs", nargs="+", help="run folders (after `compress`/`ablate` for all panels)"
            ),
            option(
                "--out",
                default=None,
                help="output folder (default: RUN_DIR/report for one run, the runs' common "
                "parent's report/ for several)",
            ),
            force("the tables and figures in an --out folder that is not a report"),
        ],
    )
