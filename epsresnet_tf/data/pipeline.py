"""Input pipelines: tensorpack DataFlow -> batches -> ``tf.data``, deterministic from (seed, epoch).

The one data -> ``tf.data`` path of the package: training (``train/loop.py``), evaluation
and compression all take their batches from here. What each dataset is (reader, shape,
splits, mean-image rule, normalisation, augmentors) is asked of its description in
:mod:`epsresnet_tf.data.datasets`; this module names no dataset.

Public API::

    make_pipeline(name, split, data_dir, batch_size, *, train, seed, num_shards=1,
                  shard_index=0, drop_remainder=None, mean="train+test", workers=0,
                  label="fine", imagenet_channel_order="rgb", imagenet_saturation="clip")
        -> Pipeline
        .batches(epoch, start_batch=0)           -> iterator of raw numpy (images, labels)
        .normalise_np(images)                    -> float32 normalised images
        .dataset(epoch, epochs=1, start_batch=0) -> tf.data.Dataset (via stream_dataset)
        .num_batches, .image_shape, .num_classes -> batches per epoch (this shard), ...
        .reports                                 -> per-epoch EpochReport (skipped images)
    make_sources(name, data_dir, batch_size, *, seed, mean, workers, evaluate, ...)
        -> (training Pipeline, evaluation Pipeline or None): what `epsresnet train` feeds
    epochs_dataset(source, start, end, steps, batch) -> tf.data over epochs [start, end)
    stream_dataset(source, first, stop, batch)       -> tf.data over stream batches [first, stop)
    pass_batches(source, pass, start, stop)          -> normalised numpy batches of one pass
    eval_batches(name, split, data_dir, batch_size, *, seed, mean, max_batches)
        -> NormalisedBatches: re-iterable normalised numpy batches (compress, evaluate)

A *source* is anything with ``batches(pass[, start_batch])``, ``num_batches``,
``normalise_np(images)`` and ``image_shape`` (a :class:`Pipeline`, or the tests' synthetic
sources); the ``tf.data`` functions ask nothing else of it.

The datasets yield ``(images, labels)``: images float32 NHWC (channels last; a
channels-first model transposes), normalised (docs/semantics.md) — CIFAR/SVHN ``(x - mean) / 128``
with the per-pixel mean image, ImageNet ``(x / 255 - (0.485, 0.456, 0.406)) / (0.229,
0.224, 0.225)`` in RGB, MNIST ``x / 255`` (28×28×1, never augmented), scikit-learn's digits
likewise (8×8×1); labels int32.

Mean image (``mean=``): ``"train+test"`` (default) is the per-pixel mean over the training
and test splits, as the authors' scripts used it: tensorpack's ``Cifar10/Cifar100
.get_per_pixel_mean()`` averages all five training batches and the test batch, and
``SVHNDigit.get_per_pixel_mean()`` averages train, test and extra (our SVHN "train" split
is train+extra, so "train+test" is exactly those three). ``"train"`` is the training split
alone (SVHN: train+extra), which keeps test images out of the preprocessing; see
docs/semantics.md.

ImageNet channel order (``imagenet_channel_order=``): ``"rgb"`` (default) feeds RGB images
normalised with the RGB ImageNet mean/std. ``"authors-bgr"`` reproduces the authors' bug:
their images come from ``cv2.imread`` (BGR) and are normalised with the RGB constants in
RGB order (their script even says "Wrong mean/std are used ... Should actually add a
RGB-BGR conversion here"), so the model sees channels (B, G, R) with B normalised by R's
mean 0.485 / std 0.229 and R by B's 0.406 / 0.225. The augmentation is the same either way
(the authors' BGR constants are the RGB ones reversed); only the normalisation step
reverses the channels. ``imagenet_saturation=`` is passed to
:func:`augment.augmentor_list` ("clip" or the authors' "authors-wrap"). Datasets without
these quirks (their description's ``quirks``) ignore both options.

How it works, per epoch:

1. The sample order is a permutation drawn from ``(seed, epoch)`` (training) or the file
   order (evaluation); under sharding each of ``num_shards`` workers takes every
   ``num_shards``-th sample, so evaluation covers the whole split exactly once.
2. The order is cut into batch-sized *jobs*; a tensorpack ``DataFromGenerator`` emits
   them and ``MapData`` (``workers=0``) or ``MultiProcessMapDataZMQ`` (``workers>0``)
   runs each one: read/decode the images, reseed every augmentor from
   ``(seed, epoch, shard, batch)``, apply the imgaug list, stack.
3. Results are put back in job order and re-cut into exact batches (only needed when
   undecodable JPEGs were skipped), normalised (the description's rule, in numpy) and fed
   to ``tf.data`` (prefetch) by :func:`stream_dataset`.

Seeding per batch rather than per worker is what makes the batches depend only on
(seed, epoch, batch index) — not on the number of worker processes, nor on where a run
was interrupted: ``start_batch=k`` resumes an epoch at its k-th batch exactly as an
uninterrupted run would have seen it (as long as no images were skipped before it).
tensorpack's ``BatchData`` is not used for that reason: it batches after a sample-level
stream whose randomness would depend on process scheduling.

Training drops the last incomplete batch (as the authors' ``BatchData(remainder=False)``);
evaluation keeps it (``drop_remainder=None`` picks that; pass a bool to override).

ImageNet JPEGs that OpenCV cannot decode are skipped and counted; the count is logged at
the end of the epoch (also when the consumer stops early, e.g. after a fixed number of
steps) and kept in ``Pipeline.reports``. If more than 0.1 % of an epoch's images are
undecodable, the pipeline raises :class:`TooManyBadImages` (a ``UserError``).
``tf.data.Dataset.from_generator`` turns any exception of the generator into a TensorFlow
``InvalidArgumentError`` with a traceback, so the pipeline also keeps the error in
``Pipeline.failure``; wrap the loop that consumes its dataset in
``with user_errors_from(pipe): ...`` to get the one-line ``UserError`` back.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import cv2
import numpy as np

from epsresnet_tf.data import augment, datasets, readers
from epsresnet_tf.data.datasets import CHANNEL_ORDERS, MEAN_MODES
from epsresnet_tf.errors import UserError

log = logging.getLogger(__name__)

MAX_BAD_FRACTION = 0.001


class TooManyBadImages(UserError):
    """More than 0.1 % of an epoch's images could not be decoded."""


@contextlib.contextmanager
def user_errors_from(*pipes: Any) -> Iterator:
    """Re-raise the ``UserError`` that stopped one of `pipes` inside ``tf.data`` (which
    reports it as an ``OpError`` with a traceback) as itself, so the CLI prints one line."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError:
        for pipe in pipes:
            if getattr(pipe, "failure", None) is not None:
                raise pipe.failure from None
        raise


@dataclass
class EpochReport:
    epoch: int
    seen: int = 0
    skipped: int = 0
    skipped_paths: list = field(default_factory=list)


# Mean images are cached per (dataset folder, options) within a process.
_MEAN_CACHE = {}


def mean_image(
    name: str, data_dir: Any, mean: str = "train+test", label: str = "fine"
) -> np.ndarray:
    """Per-pixel mean (H, W, C) float32 over the splits the description's mean rule names
    for `mean`: train+test (default, as tensorpack's ``get_per_pixel_mean``) or train."""
    if mean not in MEAN_MODES:
        raise UserError(f"mean must be 'train+test' or 'train', not {mean!r}")
    ds = datasets.get(name)
    if not ds.has_mean_image:
        raise UserError(f"{name} is not normalised with a mean image")
    key = (name, str(Path(data_dir).resolve()), mean)
    if key not in _MEAN_CACHE:
        total, count = None, 0
        for s in ds.mean_splits[mean]:
            imgs = ds.read(ds.split(s), data_dir, label=label).images
            for i in range(0, len(imgs), 8192):  # chunked: SVHN train+extra is 1.9 GB
                part = imgs[i : i + 8192].sum(axis=0, dtype=np.float64)
                total = part if total is None else total + part
            count += len(imgs)
        _MEAN_CACHE[key] = (total / count).astype(np.float32)
    return _MEAN_CACHE[key]


def _decode(path):
    """BGR JPEG -> RGB uint8, or None where OpenCV cannot decode it."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_options(channel_order, saturation, batch_size, num_shards, shard_index):
    """UserError for an unknown ImageNet channel order or saturation mode, a batch size
    below 1 or a shard index outside [0, num_shards)."""
    if channel_order not in CHANNEL_ORDERS:
        raise UserError(
            f"imagenet_channel_order must be one of {CHANNEL_ORDERS}, not {channel_order!r}"
        )
    if saturation not in augment.SATURATION_MODES:
        raise UserError(
            f"imagenet_saturation must be one of {augment.SATURATION_MODES}, not {saturation!r}"
        )
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if not 0 <= shard_index < num_shards:
        raise UserError(f"shard index {shard_index} is not in [0, {num_shards})")


class Pipeline:
    """One dataset split with its augmentation, batching, sharding and seeding; see module doc."""

    def __init__(
        self,
        name,
        split,
        data_dir,
        batch_size,
        *,
        train,
        seed,
        num_shards=1,
        shard_index=0,
        drop_remainder=None,
        mean="train+test",
        workers=0,
        label="fine",
        imagenet_channel_order="rgb",
        imagenet_saturation="clip",
    ):
        ds = self.description = datasets.get(name)
        _check_options(
            imagenet_channel_order, imagenet_saturation, batch_size, num_shards, shard_index
        )
        # Only datasets with these quirks (ImageNet) use them; others ignore them.
        self.channel_order = imagenet_channel_order if "channel_order" in ds.quirks else "rgb"
        self.name, self.split, self.train, self.seed = name, split, bool(train), int(seed)
        self.batch_size, self.num_shards, self.shard_index = batch_size, num_shards, shard_index
        self.drop_remainder = self.train if drop_remainder is None else bool(drop_remainder)
        self.workers = int(workers)
        if data_dir is None:
            data_dir = readers.default_data_dir()
        self.source = ds.read(split, data_dir, label=label)
        self.num_classes = self.source.num_classes
        self.image_shape = ds.image_shape
        self.augmentors = augment.augmentor_list(
            name, self.train, imagenet_saturation=imagenet_saturation
        )
        self.mean = mean_image(name, data_dir, mean, label) if ds.has_mean_image else None
        # Raw dtype handed from the workers on (SVHN's float canvas yields floats).
        self.raw_dtype = ds.raw_dtype(self.train)
        self.reports = []
        self.failure = None  # the UserError that stopped the last epoch, if any
        self._count_batches()

    def _count_batches(self):
        """Set shard_size and num_batches from the source's length; UserError when the shard
        makes no batch."""
        n, num_shards, batch_size = len(self.source), self.num_shards, self.batch_size
        if self.train:
            self.shard_size = n // num_shards
        else:
            self.shard_size = len(range(self.shard_index, n, num_shards))
        if self.drop_remainder:
            self.num_batches = self.shard_size // batch_size
        else:
            self.num_batches = -(-self.shard_size // batch_size)
        if self.num_batches == 0:
            raise UserError(
                f"{self.name} {self.split}: {self.shard_size} images per shard make no batch "
                f"of {batch_size}"
            )

    def __len__(self):
        return self.num_batches

    # -- order and jobs ---------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """Sample indices of this shard for `epoch`, in the order they are served."""
        n = len(self.source)
        if self.train:
            idx = np.random.default_rng([self.seed, int(epoch), 0x5EED]).permutation(n)
            idx = idx[: n - n % self.num_shards]
        else:
            idx = np.arange(n)
        return idx[self.shard_index :: self.num_shards]

    def _jobs(self, epoch, start_batch):
        idx = self.order(epoch)
        for b in range(start_batch, self.num_batches):
            yield (int(epoch), b, idx[b * self.batch_size : (b + 1) * self.batch_size])

    # -- the work of one job (runs in a worker process when workers > 0) ---------------
    def process(self, job):
        epoch, b, idx = job
        if idx is None or len(idx) == 0:  # padding job (see _run_parallel)
            return (epoch, b, None, None, [])
        if self.augmentors is not None:
            augment.reseed(
                self.augmentors, (self.seed, epoch, self.shard_index, self.num_shards, b)
            )
        out, labels, bad = [], [], []
        src = self.source
        for i in idx:
            if isinstance(src, readers.FileData):
                img = _decode(src.paths[i])
                if img is None:
                    bad.append(src.paths[i])
                    continue
            else:
                img = src.images[i]
            out.append(augment.augment_image(self.augmentors, img))
            labels.append(src.labels[i])
        if out:
            images = np.stack(out).astype(self.raw_dtype, copy=False)
        else:
            images = np.zeros((0,) + tuple(self.image_shape), self.raw_dtype)
        return (epoch, b, images, np.asarray(labels, np.int32), bad)

    # -- running the jobs --------------------------------------------------------------
    def _run_serial(self, epoch, start_batch):
        from tensorpack.dataflow import DataFromGenerator, MapData

        df = MapData(DataFromGenerator(lambda: self._jobs(epoch, start_batch)), self.process)
        df.reset_state()
        yield from df

    def _run_parallel(self, epoch, start_batch):
        """Jobs through tensorpack's ZMQ process pool, put back in job order."""
        from tensorpack.dataflow import DataFromGenerator, MultiProcessMapDataZMQ

        total = self.num_batches - start_batch

        def jobs():  # infinite, as non-strict ZMQ mapping repeats its input: pad with no-ops
            yield from self._jobs(epoch, start_batch)
            while True:
                yield (int(epoch), -1, None)

        df = MultiProcessMapDataZMQ(
            DataFromGenerator(jobs),
            num_proc=self.workers,
            map_func=self.process,
            buffer_size=max(4, 3 * self.workers),
        )
        df.reset_state()
        try:
            pending, want = {}, start_batch
            it = iter(df)
            while want < start_batch + total:
                while want not in pending:
                    res = next(it)
                    if res[1] >= 0:
                        pending[res[1]] = res
                yield pending.pop(want)
                want += 1
        finally:
            for p in getattr(df, "_procs", []):
                if p.is_alive():
                    p.terminate()
                p.join(timeout=5)
            try:
                df.socket.close(0)
                df.context.destroy(0)
            except Exception:  # already closed by tensorpack's own cleanup
                pass

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator:
        """Yield (images, labels) numpy batches of `epoch`, raw (augmented, not normalised)."""
        report = EpochReport(int(epoch))
        self.failure = None
        try:
            yield from self._rebatched(epoch, start_batch, report)
        except UserError as err:
            self.failure = err
            raise
        finally:  # also when the consumer stops early: the report is per epoch served
            self.reports.append(report)
            if report.skipped:
                log.warning(
                    "%s %s epoch %d: skipped %d undecodable image(s) of %d: %s",
                    self.name,
                    self.split,
                    epoch,
                    report.skipped,
                    report.seen,
                    ", ".join(report.skipped_paths[:5]),
                )

    def _rebatched(self, epoch, start_batch, report):
        limit = MAX_BAD_FRACTION * self.shard_size
        run = self._run_parallel if self.workers > 0 else self._run_serial
        carry_x, carry_y = [], []
        have = 0
        for _, _, images, labels, bad in run(epoch, start_batch):
            report.seen += len(labels) + len(bad)
            if bad:
                report.skipped += len(bad)
                report.skipped_paths += bad
                if report.skipped > limit:
                    raise TooManyBadImages(
                        f"{self.name} {self.split} epoch {epoch}: {report.skipped} undecodable "
                        f"images (over {MAX_BAD_FRACTION:.1%} of {self.shard_size}), e.g. "
                        f"{bad[0]}; replace or remove them"
                    )
            if not bad and not carry_x and len(labels) == self.batch_size:
                yield images, labels  # the common case: the job is the batch
                continue
            carry_x.append(images)
            carry_y.append(labels)
            have += len(labels)
            while have >= self.batch_size:
                x, y = np.concatenate(carry_x), np.concatenate(carry_y)
                yield x[: self.batch_size], y[: self.batch_size]
                carry_x, carry_y = [x[self.batch_size :]], [y[self.batch_size :]]
                have -= self.batch_size
        if have and not self.drop_remainder:
            yield np.concatenate(carry_x), np.concatenate(carry_y)

    # -- normalisation (docs/semantics.md): the description's rule ----------------------
    def normalise_np(self, images: np.ndarray) -> np.ndarray:
        return self.description.normalise(images, self.mean, self.channel_order)

    def dataset(self, epoch: int, epochs: Optional[int] = 1, start_batch: int = 0):
        """A ``tf.data.Dataset`` over `epochs` consecutive epochs from `epoch` (None: forever),
        starting at batch `start_batch` of the first one (:func:`stream_dataset`)."""
        first = int(epoch) * self.num_batches + int(start_batch)
        stop = None if epochs is None else (int(epoch) + int(epochs)) * self.num_batches
        return stream_dataset(self, first, stop, self.batch_size if self.drop_remainder else None)


def make_pipeline(
    name: str,
    split: str,
    data_dir: Any = None,
    batch_size: int = 128,
    *,
    train: bool,
    seed: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: Optional[bool] = None,
    mean: str = "train+test",
    workers: int = 0,
    label: str = "fine",
    imagenet_channel_order: str = "rgb",
    imagenet_saturation: str = "clip",
) -> Pipeline:
    """Build a :class:`Pipeline` (reads the split now, so missing files fail here);
    `data_dir` None is :func:`readers.default_data_dir`."""
    return Pipeline(
        name,
        split,
        data_dir,
        batch_size,
        train=train,
        seed=seed,
        num_shards=num_shards,
        shard_index=shard_index,
        drop_remainder=drop_remainder,
        mean=mean,
        workers=workers,
        label=label,
        imagenet_channel_order=imagenet_channel_order,
        imagenet_saturation=imagenet_saturation,
    )


def make_sources(
    name: str,
    data_dir: Any,
    batch_size: int,
    *,
    seed: int = 0,
    mean: str = "train+test",
    workers: int = 0,
    evaluate: bool = True,
    imagenet_channel_order: str = "rgb",
    imagenet_saturation: str = "clip",
) -> tuple:
    """(training pipeline, evaluation pipeline or None) of dataset `name`: its description's
    training split augmented and shuffled, its evaluation split in file order."""
    ds = datasets.get(name)
    options = dict(
        seed=seed,
        mean=mean,
        imagenet_channel_order=imagenet_channel_order,
        imagenet_saturation=imagenet_saturation,
    )
    train = make_pipeline(
        name, ds.train_split, data_dir, batch_size, train=True, workers=workers, **options
    )
    val = (
        make_pipeline(name, ds.eval_split, data_dir, batch_size, train=False, **options)
        if evaluate
        else None
    )
    return train, val


# --- the one path to tf.data ------------------------------------------------------------


def _batches_from(source: Any, data_pass: int, index: int) -> Iterator:
    """`source`'s batches of one pass over the data from batch `index` on."""
    if not index:
        return source.batches(data_pass)
    try:
        return source.batches(data_pass, start_batch=index)
    except TypeError:  # a source without start_batch (tests' synthetic ones)
        return itertools.islice(source.batches(data_pass), index, None)


def pass_batches(
    source: Any, data_pass: int, start: int = 0, stop: Optional[int] = None
) -> Iterator:
    """Normalised (images, int32 labels) numpy batches [start, stop) of pass `data_pass`
    over `source` (stop None: to the end of the pass)."""
    batches = _batches_from(source, data_pass, start)
    if stop is not None:
        batches = itertools.islice(batches, max(stop - start, 0))
    for x, y in batches:
        yield source.normalise_np(x), np.asarray(y, np.int32)


def stream_batches(source: Any, first: int, stop: Optional[int]) -> Iterator:
    """Batches [first, stop) of the stream of passes over `source` (pass p is
    ``source.batches(p)``, `num_batches` long, so batch k is batch k mod num_batches of pass
    k // num_batches; stop None: forever), normalised. A pass cut short (ImageNet images
    skipped as undecodable) is followed by the next pass from its first batch."""
    position = first
    data_pass, index = divmod(first, source.num_batches)
    while stop is None or position < stop:
        end = (
            source.num_batches if stop is None else min(source.num_batches, index + stop - position)
        )
        before = position
        for batch in pass_batches(source, data_pass, index, end):
            yield batch
            position += 1
        if position == before:  # an empty pass: nothing more will come
            return
        data_pass, index = data_pass + 1, 0


def stream_dataset(source: Any, first: int, stop: Optional[int], batch: Optional[int] = None):
    """``tf.data`` over :func:`stream_batches`: float32 NHWC images (batch dimension `batch`,
    None where the last batch may be short), int32 labels; not sharded again by
    tf.distribute (we shard ourselves, see ``Pipeline.order``)."""
    import tensorflow as tf

    sig = (
        tf.TensorSpec((batch,) + tuple(source.image_shape), tf.float32),
        tf.TensorSpec((batch,), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(
        lambda: stream_batches(source, first, stop), output_signature=sig
    )
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(opts).prefetch(2)


def epochs_dataset(
    source: Any, start: int, end: int, steps: int, global_batch: Optional[int] = None
):
    """tf.data over epochs [start, end) of `steps` batches each, cut from one stream of
    passes over `source` (anything with `batches(pass)`, `num_batches`, `normalise_np`,
    `image_shape`), as tensorpack's repeated dataflow was: epoch e is the stream's batches
    [e·steps, (e+1)·steps). Each batch depends only on (seed, pass, index), so a resumed
    run sees the data an uninterrupted one did."""
    return stream_dataset(source, start * steps, end * steps, global_batch)


class NormalisedBatches:
    """Re-iterable normalised (images, int32 labels) numpy batches of a source's pass 0,
    the first `max_batches` of them (None: all): evaluation and compression data."""

    def __init__(self, pipe: Any, max_batches: Optional[int] = None):
        self.pipe, self.max_batches = pipe, max_batches

    def __iter__(self) -> Iterator:
        return pass_batches(self.pipe, 0, 0, self.max_batches)

    def stored(self) -> Iterator:
        """The same batches before normalisation, with the values the dataset stores
        (`Dataset.to_stored`: digits 0–16, CIFAR/SVHN 0–255, ImageNet the evaluation
        crop): what a user has at hand, for the exports' raw-image entry."""
        batches = self.pipe.batches(0)
        if self.max_batches is not None:
            batches = itertools.islice(batches, self.max_batches)
        for x, y in batches:
            yield self.pipe.description.to_stored(x), np.asarray(y, np.int32)


def eval_batches(
    name: str,
    split: str,
    data_dir: Any,
    batch_size: int,
    *,
    seed: int = 0,
    mean: str = "train+test",
    max_batches: Optional[int] = None,
    label: str = "fine",
) -> NormalisedBatches:
    """Evaluation-order batches (no training augmentation) of split `split` ("train" and
    "test" are the description's training and evaluation splits)."""
    ds = datasets.get(name)
    pipe = make_pipeline(
        name, ds.split(split), data_dir, batch_size, train=False, seed=seed, mean=mean, label=label
    )
    return NormalisedBatches(pipe, max_batches)
