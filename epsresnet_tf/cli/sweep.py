"""`epsresnet sweep-eps RECIPE`: options and printing (epsresnet_tf.sweep does the work)."""

from pathlib import Path

from tabulate import tabulate

from epsresnet_tf.cli.options import add_command, data_dir, option
from epsresnet_tf.sweep import parse_eps, sweep_eps


def _cli(args):

    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.recipe).stem}"
    doc = sweep_eps(
        args.recipe,
        parse_eps(args.eps),
        out,
        args.data_dir,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        val_steps=args.val_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        budget=args.budget,
        max_error=args.max_error,
        compress=not args.no_compress,
        max_batches=args.max_batches,
        verbose=0 if args.quiet else 2,
    )

    def f(v, fmt):
        return "n/a" if v is None else fmt.format(v)

    table = [
        [
            r["epsilon"],
            f(r.get("error"), "{:.2%}"),
            f"{r.get('removed', 'n/a')}/{r.get('blocks', 'n/a')}",
            f(r.get("layer_compression"), "{:.2f}×"),
            f(r.get("param_compression"), "{:.2f}×"),
        ]
        for r in doc["rows"]
    ]
    print(tabulate(table, headers=["ε", "error", "removed/blocks", "layers", "params"]))
    c = doc["choice"]
    if c:
        print(
            f"largest compression within the budget: ε = {c['epsilon']:g} (error "
            f"{c['error']:.2%}, layers {f(c.get('layer_compression'), '{:.2f}×')})"
        )
    else:
        print("no run finished with an error within the budget")
    print(f"wrote {out / 'sweep.json'}")
    return 0


def register(subparsers):
    """Add the `sweep-eps` subcommand."""
    add_command(
        subparsers,
        "sweep-eps",
        help="train short runs over a list of ε and report compression against error",
        description="Train RECIPE once per ε (short schedule overrides), compress each run, and "
        "name the largest compression within the error budget. Writes "
        "OUT/eps<ε>/ run folders, OUT/sweep.json and OUT/report/.",
        func=_cli,
        options=[
            option("recipe", help="recipe name (epsresnet train --list) or JSON path"),
            option("--eps", required=True, help="comma-separated ε values, e.g. 1.5,2,2.5,3"),
            data_dir("dataset root"),
            option("--out", default=None, help="sweep folder (default: runs/sweep-RECIPE)"),
            option("--epochs", type=int, default=None, help="epochs per run (short schedules)"),
            option("--steps-per-epoch", type=int, default=None, help="steps per epoch"),
            option("--val-steps", type=int, default=None, help="validation batches per epoch"),
            option("--batch-size", type=int, default=None, help="batch size per replica"),
            option("--seed", type=int, default=None, help="seed of every run"),
            option(
                "--budget",
                type=float,
                default=0.01,
                help="allowed error above the sweep's best, as a fraction (0.01 = 1 point)",
            ),
            option("--max-error", type=float, default=None, help="absolute error ceiling instead"),
            option(
                "--no-compress",
                action="store_true",
                help="skip certification; compression from the EMA rule of the last epoch",
            ),
            option("--max-batches", type=int, default=None, help="certify on N batches per split"),
            option("--quiet", action="store_true", help="no per-epoch lines"),
        ],
    )
