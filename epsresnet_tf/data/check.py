"""`epsresnet data check DATASET --data-dir DIR [--json]`: what is on disk, and how fast it feeds.
`epsresnet data list [DATASET...]`: what the package knows of each dataset (its description).

Per split: image count, classes, per-class counts, mean pixel value (0–255; ImageNet: over
a sample of decoded images, with the number of undecodable ones in it); then the measured
throughput (images/s) of the augmented training pipeline through ``tf.data``. ``--json``
prints one object with at least ``train``, ``test`` (counts), ``classes`` and
``throughput_img_s``. ``--data-dir`` defaults to ``$EPSRESNET_DATA`` or ``data``, as for
every other command.
"""

import time

import numpy as np

from epsresnet_tf import jsonsafe
from epsresnet_tf.data import datasets, readers
from epsresnet_tf.data.readers import default_data_dir
from epsresnet_tf.errors import UserError

IMAGENET_MEAN_SAMPLE = 256


def split_stats(name: str, split: str, data_dir, label: str = "fine") -> dict:
    from epsresnet_tf.data import pipeline  # cv2, tensorpack

    data = datasets.read_split(name, split, data_dir, label=label)
    counts = np.bincount(data.labels, minlength=data.num_classes)
    stats = {
        "count": int(len(data)),
        "classes": int(data.num_classes),
        "per_class": [int(c) for c in counts],
    }
    if isinstance(data, readers.ArrayData):
        stats["mean_pixel"] = float(data.images.mean(dtype=np.float64))
    else:
        pick = np.random.default_rng(0).choice(
            len(data), min(len(data), IMAGENET_MEAN_SAMPLE), replace=False
        )
        decoded = [pipeline._decode(data.paths[i]) for i in pick]
        means = [img.mean(dtype=np.float64) for img in decoded if img is not None]
        stats["mean_pixel"] = float(np.mean(means)) if means else None
        stats["mean_pixel_sampled"] = len(means)
        stats["sample_undecodable"] = len(decoded) - len(means)
    return stats


def measure_throughput(
    name: str,
    data_dir,
    batch_size: int = 128,
    batches: int = 30,
    workers: int = 0,
    seconds: float = 10.0,
    label: str = "fine",
) -> float:
    """Images/s of the augmented training pipeline through tf.data, after one warm-up batch."""
    from epsresnet_tf.data import pipeline  # cv2, tensorpack

    pipe = pipeline.make_pipeline(
        name,
        datasets.get(name).train_split,
        data_dir,
        batch_size,
        train=True,
        seed=0,
        workers=workers,
        drop_remainder=False,
        label=label,
    )
    with pipeline.user_errors_from(pipe):
        it = iter(pipe.dataset(0, epochs=None))
        next(it)
        n, start = 0, time.perf_counter()
        for _ in range(batches):
            n += int(next(it)[1].shape[0])
            if time.perf_counter() - start > seconds:
                break
    return n / (time.perf_counter() - start)


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
