"""`epsresnet evaluate MODEL` and `epsresnet ablate RUN_DIR`: options and printing
(epsresnet_tf.evaluate does the work)."""

from pathlib import Path

from epsresnet_tf import compress as C
from epsresnet_tf import jsonsafe
from epsresnet_tf.cli.options import JSON, add_command, data_dir, force, option
from epsresnet_tf.data import datasets
from epsresnet_tf.errors import UserError
from epsresnet_tf.evaluate import ORDERS, ablate, evaluate_model, removal_order
from epsresnet_tf.outputs import load_net
from epsresnet_tf.runfolder import (
    MODEL,
    REDUCED_MODEL,
    atomic_write_text,
    find_run,
    read_run,
    run_data_dir,
)


def _evaluate_cli(args):
    from epsresnet_tf.data.pipeline import eval_batches

    path = Path(args.model)
    if path.is_dir():
        path = path / (MODEL if (path / MODEL).exists() else REDUCED_MODEL)
    model = load_net(path)
    run_dir = find_run(path)
    dataset, mean, seed = args.dataset, "train", 0
    if run_dir is not None:
        run = read_run(run_dir)
        dataset, mean, seed = dataset or run.dataset, run.mean, run.seed
    if dataset is None:
        raise UserError(f"cannot tell the dataset of {path}: pass --dataset (e.g. cifar10)")
    info = datasets.get(dataset)
    data = eval_batches(
        dataset,
        info.eval_split,
        run_data_dir(args.data_dir, run_dir),
        args.batch_size,
        seed=seed,
        mean=mean,
        max_batches=args.max_batches,
    )
    batches = [int(b) for b in args.latency_batches.split(",") if b]
    result = evaluate_model(model, data, batches, top5=info.top5, repeats=args.repeats)
    result.update(model_path=str(path), dataset=dataset)
    if args.json:
        print(jsonsafe.dumps(result))
        return 0
    print(f"{path}: {dataset} {info.eval_split} ({result['images']} images)")
    print(
        f"  top-1 error {100 * result['top1_error']:.2f}%"
        + (f", top-5 error {100 * result['top5_error']:.2f}%" if "top5_error" in result else "")
    )
    print(
        f"  params {result['trainable_params']:,} trainable ({result['params']:,} with BN "
        f"statistics), MACs {result['macs']:,}, layers {result['layers']}, blocks {result['blocks']}"
    )
    for b, t in result["latency_per_image_s"].items():
        print(f"  latency at batch {b}: {1e3 * t:.3f} ms per image")
    return 0


def _ablate_cli(args):
    run = read_run(args.run_dir)
    out = Path(args.out) if args.out else run.folder.ablation / f"{args.order}.json"
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to replace it or --out another file")
    model = load_net(run.model_path)
    data = C.run_datasets(run, args.data_dir, ("test",), args.max_batches)["test"]
    order_ids = removal_order(model, args.order, data, args.seed)

    rows = ablate(
        model,
        run.arch,
        run.build_options,
        order_ids,
        data,
        top5=datasets.get(run.dataset).top5,
        max_removals=args.max_removals,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"run": str(run.root), "order": args.order, "seed": args.seed, "rows": rows}
    # One file: written beside the old one and renamed over it, so --force never leaves a
    # half-written or missing ablation behind; NaN/Inf as null (strict JSON).
    atomic_write_text(out, jsonsafe.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(f"{r['removed']:4d} {r['block'] or '-':>16s}  error {100 * r['top1_error']:.2f}%")
    print(f"wrote {out}")
    return 0


def register(subparsers):
    """Add the `evaluate` and `ablate` subcommands."""
    add_command(
        subparsers,
        "evaluate",
        help="error, parameters, MACs and latency of a saved net",
        description="Evaluate a .keras net (a run folder's model.keras or reduced/reduced.keras, "
        "or any path) on the dataset's evaluation split.",
        func=_evaluate_cli,
        options=[
            option("model", help=".keras file, or a run folder / reduced folder"),
            data_dir(
                "dataset root (default: the folder the run trained with, else "
                "$EPSRESNET_DATA or ./data)",
                from_run=True,
            ),
            option(
                "--dataset", default=None, help="dataset (default: the run's, if MODEL is in one)"
            ),
            option("--batch-size", type=int, default=128, help="evaluation batch size (128)"),
            option("--max-batches", type=int, default=None, help="evaluate on the first N batches"),
            option("--latency-batches", default="1,128", help="batch sizes to time (1,128)"),
            option("--repeats", type=int, default=20, help="timed calls per batch size (20)"),
            JSON,
        ],
    )
    add_command(
        subparsers,
        "ablate",
        help="remove blocks one at a time and record the error after each removal",
        description="Removal-robustness curve (Savarese et al. Fig. 5, right) of a trained run: "
        "writes RUN_DIR/ablation/ORDER.json, which `epsresnet report` plots.",
        func=_ablate_cli,
        options=[
            option("run_dir", help="run folder written by `epsresnet train`"),
            option(
                "--order",
                choices=ORDERS,
                default="by-response",
                help="greedy-k (smallest g(k) first; k-gated nets), random, or by-response "
                "(smallest mean |contribution| first)",
            ),
            data_dir(
                "dataset root (default: the folder the run trained with, else "
                "$EPSRESNET_DATA or ./data)",
                from_run=True,
            ),
            option("--seed", type=int, default=0, help="seed of the random order"),
            option("--max-batches", type=int, default=None, help="test on the first N batches"),
            option("--max-removals", type=int, default=None, help="stop after N removals"),
            option(
                "--out", default=None, help="output JSON (default: RUN_DIR/ablation/ORDER.json)"
            ),
            force("an existing output"),
        ],
    )
