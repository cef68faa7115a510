"""`epsresnet train RECIPE`: resolve a recipe, train (or resume) into OUT/<name>/."""

import math
import shutil
import signal
import sys
from pathlib import Path

from tabulate import tabulate

from epsresnet_tf import recipes
from epsresnet_tf.cli.options import add_command, data_dir, option
from epsresnet_tf.config import parse_setting, towers_notice
from epsresnet_tf.data import datasets
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import config_text, run_data_dir
from epsresnet_tf.train.loop import make_strategy, run_training


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
    "cpu_devices": (int, 1),
    "seed": (int, 0),
    "lr": (float, 0.0),
    "weight_decay": (float, 0.0),
}


#: The options that override the config beyond the named keys (docs/CONFIG.md).
OVERRIDE_OPTIONS = [
    option(
        "--lr",
        help="base learning rate: the recipe's lr schedules scaled to start at LR "
        "(their steps keep their epochs and ratios)",
    ),
    option("--weight-decay", help="L2 weight decay factor (>= 0)"),
    option(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set any config key (repeatable); VALUE is JSON (5e-4, true, "
        "[[0, 0.1], [80, 0.01]]) or else a string; see --print-config for the keys",
    ),
    option(
        "--init-from",
        metavar="RUN",
        help="start from the net weights of the run folder RUN (same architecture; "
        "not its optimizer or epoch)",
    ),
    option(
        "--init-from-keras",
        dest="weights",
        metavar="FILE",
        help="start from the weights of a Keras file (.keras, .weights.h5, or a legacy .h5 "
        "such as keras.applications' ImageNet weights), matched by layer name; a classifier "
        "of another shape starts fresh (docs/keras-models.md)",
    ),
    option(
        "--print-config",
        action="store_true",
        help="print the resolved config (config.json) as JSON and exit",
    ),
]


#: Where and how the run goes (they do not change what it computes).
RUN_OPTIONS = [
    data_dir(
        "dataset folder (default: the run's own on a resume, else $EPSRESNET_DATA "
        "or ./data; unused by the demo's digits, which scikit-learn ships)",
        from_run=True,
    ),
    option("--out", default="runs", help="parent of the run folder (default: runs)"),
    option("--name", help="run folder name (default: recipe name + overrides)"),
    option("--gpus", help="0 (default): one device; N: MirroredStrategy over N GPUs"),
    option(
        "--cpu-devices",
        metavar="N",
        help="N logical CPU devices in place of N GPUs: the towers, ε-gates and BatchNorm "
        "groups of --gpus N, to check a multi-device run without GPUs (not for speed)",
    ),
    option("--seed", help="random seed (weights and data order)"),
    option(
        "--precision",
        help="compute precision: float32 (default), bf16 (mixed_bfloat16: fast on "
        "CPUs with AVX512-BF16/AMX) or fp16 (mixed_float16, GPUs); the gates, their "
        "monitors, the loss and the optimizer state stay float32",
    ),
    option(
        "--mixed-precision",
        action="store_true",
        help="the same as --precision fp16 (older flag)",
    ),
    option("--xla", action="store_true", help="compile the training step with XLA"),
    option(
        "--deterministic",
        action="store_true",
        help="enable TensorFlow op determinism (bit-reproducible, slower)",
    ),
    option(
        "--quiet",
        action="store_true",
        help="one line per epoch (its events at the end of it), no per-step bar",
    ),
    option(
        "--restart",
        action="store_true",
        help="move an existing run folder aside to <name>.old-<time>/ and train "
        "from the start (for a run with no valid checkpoint left)",
    ),
]


def register(subparsers):
    """Add the `train` subcommand."""
    add_command(
        subparsers,
        "train",
        help="train a recipe from experiments/ (resumes an existing run folder)",
        description="Train the recipe RECIPE (a name in experiments/ or a .json path) into "
        "OUT/<name>/: config.json, history.jsonl, tb/, ckpt/, model.keras. "
        "Running again resumes, and may change what affects only the epochs to come "
        "(--epochs …: docs/CONFIG.md); a folder holding another config is refused.",
        func=main,
        options=[
            option("recipe", nargs="?", help="recipe name (see --list) or path to a JSON recipe"),
            option("--list", action="store_true", help="list the recipes and exit"),
            option(
                "--long",
                action="store_true",
                help="with --list: the whole descriptions (default: cut to the terminal)",
            ),
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
            *OVERRIDE_OPTIONS,
            *RUN_OPTIONS,
        ],
    )


#: The named flags that set a config key of the same name (the others: depth, lr).
NAMED_KEYS = (
    "epsilon",
    "epochs",
    "batch_size",
    "steps_per_epoch",
    "val_steps",
    "gpus",
    "seed",
    "weight_decay",
    "mixed_precision",
    "precision",
    "xla",
    "deterministic",
    "init_from",
    "weights",
)
#: Named flags whose name is not their key's.
FLAG_NAMES = {"weights": "--init-from-keras"}


def overrides_of(args):
    """The config overrides of the command line: the named flags, then each --set (parsed
    and checked by config.parse_setting). A key given both ways with two values is refused."""
    named = {key: getattr(args, key) for key in NAMED_KEYS}
    for key in ("mixed_precision", "xla", "deterministic"):  # store_true: absent is "recipe's"
        named[key] = True if named[key] else None
    settings = dict(parse_setting(text) for text in args.set or ())
    for key, value in settings.items():
        if named.get(key) is not None and named[key] != value:
            flag = FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
            raise UserError(
                f"{key} given twice: {flag} {getattr(args, key)} and --set {key}={value}; give one"
            )
    overrides = {**named, **settings}
    for key in ("init_from", "weights"):  # the config names the source wherever it runs
        if isinstance(overrides[key], str):
            overrides[key] = str(Path(overrides[key]).resolve())
    return overrides


def main(args):

    for key, (kind, low) in NUMERIC.items():
        setattr(args, key, _number(getattr(args, key), "--" + key.replace("_", "-"), kind, low))
    if args.list:
        rows = [(n, recipes.load(n).get("description", "")) for n in recipes.available()]
        if not args.long:  # one line each within the terminal (80 columns off a terminal)
            width = shutil.get_terminal_size((80, 24)).columns
            room = max(width - max(len(n) for n, _ in rows) - 3, 10)
            rows = [(n, d if len(d) <= room else d[: room - 1] + "…") for n, d in rows]
        print(tabulate(rows, headers=("recipe", "description")))
        return None
    if not args.recipe:
        raise UserError("name a recipe (epsresnet train --list shows them)")
    if args.cpu_devices is not None:  # N CPU devices stand in for N GPUs: the same config
        if args.gpus not in (None, 0, args.cpu_devices):  # make passes --gpus 0
            raise UserError(
                f"--gpus {args.gpus} and --cpu-devices {args.cpu_devices}: give one of them"
            )
        args.gpus = args.cpu_devices
    overrides = overrides_of(args)
    if args.name:
        overrides["name"] = args.name
    name, cfg = recipes.resolve(args.recipe, depth=args.depth, lr=args.lr, **overrides)
    notices = _notices(args, cfg)
    if args.print_config:  # what training would write to config.json; nothing is touched
        for line in notices:  # stdout is the JSON alone
            print(line, file=sys.stderr)
        print(config_text(cfg), end="")
        return None
    for line in notices:  # print(*[]) would still write an empty line
        print(line, flush=True)

    run_dir = Path(args.out) / name
    data_dir = Path(run_data_dir(args.data_dir, run_dir))  # a resume: the run's own folder
    # a dataset that ships inside a package (the demo's digits) needs no data folder
    described = datasets.get(cfg["dataset"])
    if not described.embedded and not data_dir.exists():
        raise UserError(
            f"data folder {data_dir} does not exist: pass --data-dir, or get {described.name} "
            f"there ({described.how_to_get.replace(' there', '')}; layout {described.layout})"
        )

    strategy = None if args.cpu_devices is None else make_strategy(cfg["gpus"], device="cpu")
    try:
        result = run_training(
            cfg,
            run_dir,
            data_dir,
            strategy=strategy,
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


def _notices(args, cfg):
    """The lines said before a run starts: towers that are not the recipe's own (the
    authors' device rule, config.authors_towers), and logical CPU devices standing in for
    GPUs."""
    flag = "--cpu-devices" if args.cpu_devices is not None else "--gpus"
    lines = [towers_notice(recipes.load(args.recipe), cfg, flag)]
    if args.cpu_devices is not None:
        n = args.cpu_devices
        lines.append(
            f"--cpu-devices {n}: {n} logical CPU {'devices stand' if n > 1 else 'device stands'} "
            f"in for --gpus {n} "
            "(the same towers, ε-gates and BatchNorm groups per device; for checking a "
            "multi-device run, not for speed)"
        )
    return [line for line in lines if line]


def summary(result):
    """The last epoch's per-block discard table and one line of totals (tabulate), in the
    words of the epoch lines (`epsresnet_tf.train.progress`)."""
    from epsresnet_tf.train.progress import DISCARDED_ABOVE, measures

    rows = result.get("history") or []
    if not rows:
        return f"{result['run_dir']}: no epoch finished"
    last = rows[-1]
    table = [
        (
            bid,
            f"{b['discarded']:.3f}",
            f"{b.get('response_max', float('nan')):.3f}",
            "discarded" if b["discarded"] > DISCARDED_ABOVE else "",
        )
        for bid, b in last["blocks"].items()
    ]
    headers = ("block", "EMA of 1-T", "max|F|", "")
    text = tabulate(table, headers=headers) + "\n" if table else ""
    return f"{text}{result['run_dir']}: epoch {last['epoch']}, " + ", ".join(measures(last))
