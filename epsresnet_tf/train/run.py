"""`epsresnet train RECIPE`: resolve a recipe, train (or resume) into OUT/<name>/."""

import math
import signal
import sys
from pathlib import Path

from epsresnet_tf.commands import add_command, data_dir, option
from epsresnet_tf.errors import UserError


def _number(text, flag, kind, low):
    """Flags are parsed here rather than by argparse, so a bad value is one UserError line."""
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise UserError(
            f"{flag} expects {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if not math.isfinite(value):  # float("inf") and float("nan") parse; JSON has neither
        raise UserError(f"{flag} must be a finite number, got {text!r}")
    if not value >= low:
        raise UserError(f"{flag} must be >= {low}, got {text}")
    return value


NUMERIC = {
    "depth": (int, 1),
    "epsilon": (float, 0.0),
    "epochs": (int, 1),
    "batch_size": (int, 1),
    "steps_per_epoch": (int, 1),
    "val_steps": (int, 0),
    "gpus": (int, 0),
    "seed": (int, 0),
}


def register(subparsers):
    """Add the `train` subcommand."""
    add_command(
        subparsers,
        "train",
        help="train a recipe from experiments/ (resumes an existing run folder)",
        description="Train the recipe RECIPE (a name in experiments/ or a .json path) into "
        "OUT/<name>/: config.json, history.jsonl, tb/, ckpt/, model.keras. "
        "Running again into the same folder resumes; a folder holding another "
        "config is refused.",
        func=main,
        options=[
            option("recipe", nargs="?", help="recipe name (see --list) or path to a JSON recipe"),
            option("--list", action="store_true", help="list the recipes and exit"),
            option(
                "--depth", help="network depth for recipes with a depth (e.g. 110, 200, 500, 752)"
            ),
            option("--epsilon", help="the ε of the gates (>= 0)"),
            option("--epochs", help="number of epochs to train in total"),
            option(
                "--batch-size",
                help="batch size (per replica, or in total where the recipe says so)",
            ),
            option(
                "--steps-per-epoch",
                help="cap on training steps per epoch (default: the whole split)",
            ),
            option("--val-steps", help="cap on validation batches per epoch; 0 skips validation"),
            data_dir(
                "folder with the dataset files (default: $EPSRESNET_DATA or ./data; "
                "unused by the demo's digits, which scikit-learn ships)"
            ),
            option("--out", default="runs", help="parent of the run folder (default: runs)"),
            option("--name", help="run folder name (default: recipe name + overrides)"),
            option(
                "--gpus",
                default="0",
                help="0: one device; N: MirroredStrategy over N GPUs (per-replica batch)",
            ),
            option("--seed", help="random seed (weights and data order)"),
            option(
                "--mixed-precision",
                action="store_true",
                help="mixed_float16 compute (the gates stay float32)",
            ),
            option(
                "--precision",
                help="compute precision: float32 (default), bf16 (mixed_bfloat16: fast on "
                "CPUs with AVX512-BF16/AMX) or fp16 (mixed_float16, GPUs); the gates, their "
                "monitors, the loss and the optimizer state stay float32",
            ),
            option("--xla", action="store_true", help="compile the training step with XLA"),
            option(
                "--deterministic",
                action="store_true",
                help="enable TensorFlow op determinism (bit-reproducible, slower)",
            ),
            option("--quiet", action="store_true", help="one line per epoch, no progress bar"),
            option(
                "--restart",
                action="store_true",
                help="move an existing run folder aside to <name>.old-<time>/ and train "
                "from the start (for a run with no valid checkpoint left)",
            ),
        ],
    )


def main(args):
    from epsresnet_tf import recipes

    for key, (kind, low) in NUMERIC.items():
        setattr(args, key, _number(getattr(args, key), "--" + key.replace("_", "-"), kind, low))
    if args.list:
        from tabulate import tabulate

        rows = [(n, recipes.load(n).get("description", "")) for n in recipes.available()]
        print(tabulate(rows, headers=("recipe", "description")))
        return None
    if not args.recipe:
        raise UserError("name a recipe (epsresnet train --list shows them)")
    overrides = dict(
        epsilon=args.epsilon,
        epochs=args.epochs,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
        val_steps=args.val_steps,
        gpus=args.gpus,
        seed=args.seed,
        mixed_precision=True if args.mixed_precision else None,
        precision=args.precision,
        xla=True if args.xla else None,
        deterministic=True if args.deterministic else None,
    )
    name, cfg = recipes.resolve(args.recipe, depth=args.depth, **overrides)
    if args.name:
        name = cfg["name"] = args.name
    from epsresnet_tf.data import datasets

    data_dir = Path(args.data_dir)
    # a dataset that ships inside a package (the demo's digits) needs no data folder
    if not datasets.get(cfg["dataset"]).embedded and not data_dir.exists():
        raise UserError(f"data folder {data_dir} does not exist (pass --data-dir)")
    from epsresnet_tf.train.loop import run_training

    try:
        result = run_training(
            cfg,
            Path(args.out) / name,
            data_dir,
            verbose=2 if args.quiet else 1,
            restart=args.restart,
        )
    except KeyboardInterrupt:  # a Ctrl-C the loop's own handler did not see (set-up, exit)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stopped before training began; run the same command to resume", file=sys.stderr)
        return 130
    if result["status"] == "interrupted":  # its one line is printed: no summary
        # stopping is decided and said: a further Ctrl-C during TensorFlow's teardown
        # must not kill the process with a signal status instead of 130/143
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return result["exit_code"]
    print(summary(result))
    return 1 if result["status"] != "done" else None


def summary(result):
    """The last epoch's per-block discard table and totals (tabulate)."""
    from tabulate import tabulate

    rows = result.get("history") or []
    if not rows:
        return f"{result['run_dir']}: no epoch finished"
    last = rows[-1]
    table = [
        (
            bid,
            f"{b['discarded']:.3f}",
            f"{b.get('response_max', float('nan')):.3f}",
            "discarded" if b["discarded"] > 0.5 else "",
        )
        for bid, b in last["blocks"].items()
    ]
    text = tabulate(table, headers=("block", "EMA(1-T)", "max|F|", "")) if table else ""
    err = last.get("val_error")
    return (
        f"{text}\n{result['run_dir']}: epoch {last['epoch']}, discarded "
        f"{last['discarded_count']:.2f} of {len(last['blocks'])} blocks "
        f"({last['discarded_ratio']:.1%})"
        + (f", validation error {err:.2%}" if err is not None else "")
    )
