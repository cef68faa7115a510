"""Input pipelines: tensorpack DataFlow -> batches -> ``tf.data``, deterministic from (seed, epoch).

Public API (what the training loop calls)::

    dataset_info(name) -> DatasetInfo(name, image_shape, num_classes, splits={split: size},
                                      train_split, eval_split)
    make_dataset(name, split, data_dir, batch_size, *, train, seed, epoch, epochs=1,
                 start_batch=0, num_shards=1, shard_index=0, drop_remainder=None,
                 mean="train+test", workers=0, label="fine", imagenet_channel_order="rgb",
                 imagenet_saturation="clip") -> tf.data.Dataset
    make_pipeline(...same arguments, no epoch...) -> Pipeline
        .dataset(epoch, epochs=1, start_batch=0) -> tf.data.Dataset
        .batches(epoch, start_batch=0)           -> iterator of raw numpy (images, labels)
        .num_batches                             -> batches per epoch (this shard)
        .reports                                 -> per-epoch EpochReport (skipped images)
    distributed_dataset_fn(name, split, data_dir, global_batch_size, **kw)
        -> fn(tf.distribute.InputContext) for strategy.distribute_datasets_from_function

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
:func:`augment.augmentor_list` ("clip" or the authors' "authors-wrap").

How it works, per epoch:

1. The sample order is a permutation drawn from ``(seed, epoch)`` (training) or the file
   order (evaluation); under sharding each of ``num_shards`` workers takes every
   ``num_shards``-th sample, so evaluation covers the whole split exactly once.
2. The order is cut into batch-sized *jobs*; a tensorpack ``DataFromGenerator`` emits
   them and ``MapData`` (``workers=0``) or ``MultiProcessMapDataZMQ`` (``workers>0``)
   runs each one: read/decode the images, reseed every augmentor from
   ``(seed, epoch, shard, batch)``, apply the imgaug list, stack.
3. Results are put back in job order and re-cut into exact batches (only needed when
   undecodable JPEGs were skipped), then fed to ``tf.data`` (normalise, prefetch).

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
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from epsresnet_tf.data import augment, readers
from epsresnet_tf.errors import UserError

log = logging.getLogger(__name__)

MAX_BAD_FRACTION = 0.001
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_shape: tuple
    num_classes: int
    splits: dict
    train_split: str = "train"
    eval_split: str = "test"


_INFO = {
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, {"train": 50000, "test": 10000}),
    "cifar100": DatasetInfo("cifar100", (32, 32, 3), 100, {"train": 50000, "test": 10000}),
    "svhn": DatasetInfo("svhn", (32, 32, 3), 10,
                        {"train": 604388, "train-only": 73257, "extra": 531131, "test": 26032}),
    "imagenet": DatasetInfo("imagenet", (224, 224, 3), 1000,
                            {"train": 1281167, "val": 50000}, eval_split="val"),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, {"train": 60000, "test": 10000}),
    "digits": DatasetInfo("digits", (8, 8, 1), 10, {"train": 1437, "test": 360}),
}


def dataset_info(name):
    """Static facts of the full official dataset: image shape, classes, split sizes."""
    if name not in _INFO:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(readers.DATASETS)}")
    return _INFO[name]


class TooManyBadImages(UserError):
    """More than 0.1 % of an epoch's images could not be decoded."""


@contextlib.contextmanager
def user_errors_from(*pipes):
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


MEAN_MODES = ("train+test", "train")
CHANNEL_ORDERS = ("rgb", "authors-bgr")


def mean_image(name, data_dir, mean="train+test", label="fine"):
    """Per-pixel mean (H, W, C) float32 over train+test (default, as tensorpack's
    ``get_per_pixel_mean``) or over the training split alone."""
    if mean not in MEAN_MODES:
        raise UserError(f"mean must be 'train+test' or 'train', not {mean!r}")
    key = (name, str(Path(data_dir).resolve()), mean)
    if key not in _MEAN_CACHE:
        splits = ["train"] + (["test"] if mean == "train+test" else [])
        total, count = None, 0
        for s in splits:
            imgs = readers.read_split(name, s, data_dir, label=label).images
            for i in range(0, len(imgs), 8192):   # chunked: SVHN train+extra is 1.9 GB
                part = imgs[i:i + 8192].sum(axis=0, dtype=np.float64)
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


class Pipeline:
    """One dataset split with its augmentation, batching, sharding and seeding; see module doc."""

    def __init__(self, name, split, data_dir, batch_size, *, train, seed, num_shards=1,
                 shard_index=0, drop_remainder=None, mean="train+test", workers=0, label="fine",
                 imagenet_channel_order="rgb", imagenet_saturation="clip"):
        info = dataset_info(name)
        if imagenet_channel_order not in CHANNEL_ORDERS:
            raise UserError(f"imagenet_channel_order must be one of {CHANNEL_ORDERS}, "
                            f"not {imagenet_channel_order!r}")
        if imagenet_saturation not in augment.SATURATION_MODES:
            raise UserError(f"imagenet_saturation must be one of {augment.SATURATION_MODES}, "
                            f"not {imagenet_saturation!r}")
        # Only ImageNet has these quirks; other datasets ignore them.
        self.channel_order = imagenet_channel_order if name == "imagenet" else "rgb"
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        if not 0 <= shard_index < num_shards:
            raise UserError(f"shard index {shard_index} is not in [0, {num_shards})")
        self.name, self.split, self.train, self.seed = name, split, bool(train), int(seed)
        self.batch_size, self.num_shards, self.shard_index = batch_size, num_shards, shard_index
        self.drop_remainder = self.train if drop_remainder is None else bool(drop_remainder)
        self.workers = int(workers)
        if data_dir is None:
            data_dir = readers.default_data_dir()
        self.source = readers.read_split(name, split, data_dir, label=label)
        self.num_classes = self.source.num_classes
        self.image_shape = info.image_shape
        self.augmentors = augment.augmentor_list(name, self.train,
                                                 imagenet_saturation=imagenet_saturation)
        self.mean = (mean_image(name, data_dir, mean, label)
                     if name in ("cifar10", "cifar100", "svhn") else None)
        # Raw dtype handed from the workers to TF: SVHN's float canvas yields floats.
        self.raw_dtype = np.float32 if (name == "svhn" and self.train) else np.uint8
        self.reports = []
        self.failure = None   # the UserError that stopped the last epoch, if any
        n = len(self.source)
        self.shard_size = (n // num_shards if self.train
                           else len(range(shard_index, n, num_shards)))
        if self.drop_remainder:
            self.num_batches = self.shard_size // batch_size
        else:
            self.num_batches = -(-self.shard_size // batch_size)
        if self.num_batches == 0:
            raise UserError(f"{name} {split}: {self.shard_size} images per shard make no "
                            f"batch of {batch_size}")

    def __len__(self):
        return self.num_batches

    # -- order and jobs ---------------------------------------------------------------
    def order(self, epoch):
        """Sample indices of this shard for `epoch`, in the order they are served."""
        n = len(self.source)
        if self.train:
            idx = np.random.default_rng([self.seed, int(epoch), 0x5EED]).permutation(n)
            idx = idx[:n - n % self.num_shards]
        else:
            idx = np.arange(n)
        return idx[self.shard_index::self.num_shards]

    def _jobs(self, epoch, start_batch):
        idx = self.order(epoch)
        for b in range(start_batch, self.num_batches):
            yield (int(epoch), b, idx[b * self.batch_size:(b + 1) * self.batch_size])

    # -- the work of one job (runs in a worker process when workers > 0) ---------------
    def process(self, job):
        epoch, b, idx = job
        if idx is None or len(idx) == 0:          # padding job (see _run_parallel)
            return (epoch, b, None, None, [])
        if self.augmentors is not None:
            augment.reseed(self.augmentors, (self.seed, epoch, self.shard_index,
                                             self.num_shards, b))
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

        df = MultiProcessMapDataZMQ(DataFromGenerator(jobs), num_proc=self.workers,
                                    map_func=self.process,
                                    buffer_size=max(4, 3 * self.workers))
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

    def batches(self, epoch, start_batch=0):
        """Yield (images, labels) numpy batches of `epoch`, raw (augmented, not normalised)."""
        report = EpochReport(int(epoch))
        self.failure = None
        try:
            yield from self._rebatched(epoch, start_batch, report)
        except UserError as err:
            self.failure = err
            raise
        finally:    # also when the consumer stops early: the report is per epoch served
            self.reports.append(report)
            if report.skipped:
                log.warning("%s %s epoch %d: skipped %d undecodable image(s) of %d: %s",
                            self.name, self.split, epoch, report.skipped, report.seen,
                            ", ".join(report.skipped_paths[:5]))

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
                        f"{bad[0]}; replace or remove them")
            if not bad and not carry_x and len(labels) == self.batch_size:
                yield images, labels        # the common case: the job is the batch
                continue
            carry_x.append(images)
            carry_y.append(labels)
            have += len(labels)
            while have >= self.batch_size:
                x, y = np.concatenate(carry_x), np.concatenate(carry_y)
                yield x[:self.batch_size], y[:self.batch_size]
                carry_x, carry_y = [x[self.batch_size:]], [y[self.batch_size:]]
                have -= self.batch_size
        if have and not self.drop_remainder:
            yield np.concatenate(carry_x), np.concatenate(carry_y)

    # -- normalisation (docs/semantics.md) ---------------------------------------------------
    def normalise_np(self, images):
        x = images.astype(np.float32)
        if self.mean is not None:
            return (x - self.mean) / 128.0
        if self.name == "imagenet":
            if self.channel_order == "authors-bgr":
                x = x[..., ::-1]      # the authors' BGR image, RGB constants (their bug)
            return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return x / 255.0

    def _normalise_tf(self, images, labels):
        import tensorflow as tf
        x = tf.cast(images, tf.float32)
        if self.mean is not None:
            x = (x - tf.constant(self.mean)) / 128.0
        elif self.name == "imagenet":
            if self.channel_order == "authors-bgr":
                x = tf.reverse(x, axis=[-1])   # the authors' BGR image, RGB constants
            x = (x / 255.0 - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)
        else:
            x = x / 255.0
        return x, labels

    def dataset(self, epoch, epochs=1, start_batch=0):
        """A ``tf.data.Dataset`` over `epochs` consecutive epochs from `epoch` (None: forever),
        starting at batch `start_batch` of the first one."""
        import tensorflow as tf

        def gen():
            e, s = int(epoch), int(start_batch)
            while epochs is None or e < epoch + epochs:
                yield from self.batches(e, s)
                e, s = e + 1, 0

        bdim = self.batch_size if self.drop_remainder else None
        sig = (tf.TensorSpec((bdim,) + tuple(self.image_shape), tf.as_dtype(self.raw_dtype)),
               tf.TensorSpec((bdim,), tf.int32))
        ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
        ds = ds.map(self._normalise_tf, num_parallel_calls=tf.data.AUTOTUNE)
        opts = tf.data.Options()
        # We shard ourselves (see `order`); tf.distribute must not shard again.
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(opts)
        return ds.prefetch(tf.data.AUTOTUNE)


def make_pipeline(name, split, data_dir=None, batch_size=128, *, train, seed=0,
                  num_shards=1, shard_index=0, drop_remainder=None, mean="train+test", workers=0,
                  label="fine", imagenet_channel_order="rgb", imagenet_saturation="clip"):
    """Build a :class:`Pipeline` (reads the split now, so missing files fail here);
    `data_dir` None is :func:`readers.default_data_dir`."""
    return Pipeline(name, split, data_dir, batch_size, train=train, seed=seed,
                    num_shards=num_shards, shard_index=shard_index,
                    drop_remainder=drop_remainder, mean=mean, workers=workers, label=label,
                    imagenet_channel_order=imagenet_channel_order,
                    imagenet_saturation=imagenet_saturation)


def make_dataset(name, split, data_dir=None, batch_size=128, *, train, seed=0,
                 epoch=0, epochs=1, start_batch=0, num_shards=1, shard_index=0,
                 drop_remainder=None, mean="train+test", workers=0, label="fine",
                 imagenet_channel_order="rgb", imagenet_saturation="clip"):
    """``tf.data.Dataset`` of (float32 NHWC images, int32 labels) for `epoch`; see module doc."""
    pipe = make_pipeline(name, split, data_dir, batch_size, train=train, seed=seed,
                         num_shards=num_shards, shard_index=shard_index,
                         drop_remainder=drop_remainder, mean=mean, workers=workers, label=label,
                         imagenet_channel_order=imagenet_channel_order,
                         imagenet_saturation=imagenet_saturation)
    return pipe.dataset(epoch, epochs=epochs, start_batch=start_batch)


def distributed_dataset_fn(name, split, data_dir, global_batch_size, *, train, seed=0, epoch=0,
                           epochs=1, **kwargs):
    """For ``strategy.distribute_datasets_from_function``: one shard per input pipeline,
    each yielding per-replica batches."""
    def fn(ctx):
        return make_dataset(name, split, data_dir,
                            ctx.get_per_replica_batch_size(global_batch_size), train=train,
                            seed=seed, epoch=epoch, epochs=epochs,
                            num_shards=ctx.num_input_pipelines,
                            shard_index=ctx.input_pipeline_id, **kwargs)
    return fn

