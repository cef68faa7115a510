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

from epsresnet_tf.data import datasets, readers

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
