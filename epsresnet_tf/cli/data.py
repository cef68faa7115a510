"""`epsresnet data check|list`: options and printing (epsresnet_tf.data.check measures)."""

import numpy as np

from epsresnet_tf import jsonsafe
from epsresnet_tf.data import datasets
from epsresnet_tf.data.check import measure_throughput, split_stats
from epsresnet_tf.data.readers import default_data_dir
from epsresnet_tf.errors import UserError


def run_check(args):
    info = datasets.get(args.dataset)
    result = {"dataset": args.dataset, "data_dir": str(args.data_dir), "splits": {}}
    for s in (info.train_split, info.eval_split):
        result["splits"][s] = split_stats(args.dataset, s, args.data_dir, args.label)
    result["train"] = result["splits"][info.train_split]["count"]
    result["test"] = result["splits"][info.eval_split]["count"]
    result["classes"] = result["splits"][info.train_split]["classes"]
    if not args.json:  # the counts first: they stay on screen if the pipeline fails
        print_splits(result)
    result["throughput_img_s"] = (
        None
        if args.no_throughput
        else round(
            measure_throughput(
                args.dataset,
                args.data_dir,
                args.batch_size,
                args.batches,
                args.workers,
                label=args.label,
            ),
            1,
        )
    )
    if args.json:
        print(jsonsafe.dumps(result))
    elif result["throughput_img_s"] is not None:
        print(
            f"  augmented train pipeline: {result['throughput_img_s']:.0f} images/s "
            f"(batch {args.batch_size}, workers {args.workers})"
        )
    return None


def print_splits(result):
    print(f"{result['dataset']} in {result['data_dir']}: {result['classes']} classes")
    for s, st in result["splits"].items():
        pc = st["per_class"]
        per = (
            " ".join(str(c) for c in pc)
            if len(pc) <= 20
            else f"min {min(pc)}, median {int(np.median(pc))}, max {max(pc)}"
        )
        mp = "n/a" if st["mean_pixel"] is None else f"{st['mean_pixel']:.2f}"
        extra = (
            f" (over {st['mean_pixel_sampled']} sampled images, "
            f"{st['sample_undecodable']} undecodable)"
            if "mean_pixel_sampled" in st
            else ""
        )
        print(f"  {s:<6} {st['count']:>8} images; per class: {per}; mean pixel {mp}{extra}")


def run_list(args) -> None:
    """`epsresnet data list`: every dataset description, a few lines each."""
    for name in args.dataset or datasets.names():
        print(datasets.describe(datasets.get(name)))
    return None


def register(subparsers) -> None:

    p = subparsers.add_parser("data", help="inspect datasets on disk")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="counts, classes, mean pixel and pipeline throughput")
    c.add_argument("dataset", choices=datasets.names())
    c.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="data root (default: $EPSRESNET_DATA or ./data)",
    )
    c.add_argument(
        "--label",
        choices=("fine", "coarse"),
        default="fine",
        help="CIFAR-100 labels: the 100 fine classes or the 20 coarse ones",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--batches", type=int, default=30, help="batches timed for throughput")
    c.add_argument("--workers", type=int, default=0, help="worker processes (0: in-process)")
    c.add_argument("--no-throughput", action="store_true", help="skip the throughput measure")
    c.set_defaults(func=_checked(run_check))
    lst = sub.add_parser(
        "list",
        help="the dataset descriptions: shape, classes, splits, "
        "normalisation, augmentation, where to get them, layout",
    )
    lst.add_argument(
        "dataset",
        nargs="*",
        help=f"datasets to describe (default: all of {', '.join(datasets.names())})",
    )
    lst.set_defaults(func=run_list)


def _checked(fn):
    def wrapper(args):
        if args.batch_size < 1 or args.batches < 1 or args.workers < 0:
            raise UserError("--batch-size and --batches must be positive, --workers >= 0")
        return fn(args)

    return wrapper
