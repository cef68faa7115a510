"""One description per dataset: every fact the package knows about it, in one place.

As tensorpack keeps one class per dataset, each :class:`Dataset` here holds its reader,
image shape, classes, split names and sizes, which split trains and which evaluates, the
mean-image rule and the normalisation, the augmentor lists, the download sources, whether
it is scored top-5, whether it ships inside a package, and the folder layout and "how to
get it" text that error messages and ``epsresnet data list`` print. The readers
(:mod:`readers`, which own the file formats), the pipeline, the augmentation, the download,
``data check``, ``epsresnet train`` and ``epsresnet evaluate`` ask these descriptions and
name no dataset themselves.

Adding a dataset: a reader function in readers.py if its format is new, one
:class:`Dataset` entry below (and a recipe in experiments/).

Import-light on purpose (numpy and readers.py only; the augmentor lists are named, not
built, here) so that ``python -m epsresnet_tf.data.download`` starts fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from epsresnet_tf.data import readers
from epsresnet_tf.errors import UserError

#: ImageNet's per-channel mean and std (RGB, for pixels scaled to [0, 1]).
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)

#: Values of the mean-image option (``mean=``) and the ImageNet channel-order option.
MEAN_MODES = ("train+test", "train")
CHANNEL_ORDERS = ("rgb", "authors-bgr")

#: Normalisations (docs/semantics.md): the per-pixel mean image then /128 (CIFAR, SVHN),
#: ImageNet's /255, mean, std, or plain /255 (MNIST, digits).
NORMALISATIONS = ("mean-image/128", "imagenet-mean-std", "/255")


class Source(NamedTuple):
    """One file to download: (url, file name, md5, folder its archive unpacks to or None,
    sub-folder of the data root the file goes to)."""

    url: str
    file: str
    md5: str
    extracted: Optional[str]
    sub: str


Reader = Callable[[Path, str, str], Any]  # (data root, split, label) -> ArrayData | FileData


@dataclass(frozen=True)
class Dataset:
    """The facts of one dataset (the full official one; the subsets in ../shared/data are
    smaller but otherwise the same)."""

    name: str
    title: str
    reader: Reader  # readers.py function, called as reader(root, split, label)
    image_shape: tuple
    num_classes: int
    splits: dict  # {split name: images in the official dataset}
    train_split: str = "train"
    eval_split: str = "test"
    #: The splits the mean image averages, per mean mode (empty: no mean image).
    mean_splits: dict = field(default_factory=dict)
    normalisation: str = "/255"  # one of NORMALISATIONS
    train_augmentors: Optional[str] = None  # name of a list builder in augment.py, or None
    eval_augmentors: Optional[str] = None
    train_raw_dtype: Any = np.uint8  # dtype of augmented training batches before normalising
    labels: tuple = ("fine",)  # label sets the reader offers (CIFAR-100: fine, coarse)
    sources: tuple = ()  # Source rows that `make data-<name>` downloads
    top5: bool = False  # evaluated (and reported) with a top-5 error too
    embedded: bool = False  # ships inside a package: --data-dir plays no part
    #: The authors' ImageNet input quirks this dataset accepts ("channel_order", "saturation").
    quirks: tuple = ()
    layout: str = ""  # the expected files under the data root
    how_to_get: str = ""  # the fix printed when a file is missing
    #: The pixel values as the dataset stores them, 0..stored_levels; its reader scales
    #: them to uint8 0–255 where that is not 255 (digits: 0–16).
    stored_levels: int = 255

    # -- reading ---------------------------------------------------------------------
    def split(self, name: str) -> str:
        """The dataset's own name of split `name`: "train" and "test" are its training and
        evaluation splits (ImageNet's "test" is "val"), other names are taken as they are."""
        return {"train": self.train_split, "test": self.eval_split}.get(name, name)

    def read(self, split: str, data_dir: Any = None, *, label: str = "fine"):
        """Split `split` of this dataset under the data root `data_dir` (None: the default
        root) as readers.ArrayData or readers.FileData; UserError with the fix when missing."""
        root = None  # an embedded dataset: `data_dir` plays no part
        if not self.embedded:
            root = Path(os.path.expanduser(str(data_dir or readers.default_data_dir())))
            if not root.exists():
                raise self.missing(root)
        try:
            return self.reader(root, split, label)
        except readers.DataNeeded as err:  # the reader says what is missing, we say how to get it
            raise UserError(f"{err}; {self.how_to_get}") from None

    def missing(self, path: Any) -> UserError:
        """The one-line error for a missing file or folder `path`."""
        return UserError(f"{self.name}: expected {path} — it is missing; {self.how_to_get}")

    # -- normalisation (docs/semantics.md) ---------------------------------------------
    @property
    def has_mean_image(self) -> bool:
        return bool(self.mean_splits)

    def normalise(
        self, images: Any, mean: Optional[np.ndarray] = None, channel_order: str = "rgb"
    ) -> Any:
        """Normalised float32 images from raw numpy ones: ``(x - mean) / 128`` with the mean image, ImageNet's ``(x / 255 - mean) /
        std`` (``channel_order="authors-bgr"``: channels reversed first, the authors' bug),
        else ``x / 255``."""
        x = np.asarray(images).astype(np.float32)
        if self.normalisation == "mean-image/128":
            if mean is None:
                raise ValueError(f"{self.name} is normalised with its mean image: pass mean=")
            return (x - mean) / np.float32(128.0)
        if self.normalisation == "imagenet-mean-std":
            if channel_order == "authors-bgr":
                x = x[..., ::-1]  # the authors' BGR image, RGB constants (their bug)
            return (x / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD
        return x / np.float32(255.0)

    def to_stored(self, images: np.ndarray) -> np.ndarray:
        """uint8 0–255 images as the reader gives them back to the values the dataset
        stores, 0..stored_levels (exact: the reader's rint(x · 255/levels) is one to one)."""
        if self.stored_levels == 255:
            return images
        return np.rint(images * (self.stored_levels / 255.0)).astype(np.uint8)

    def raw_dtype(self, train: bool) -> Any:
        return self.train_raw_dtype if train else np.uint8


# ----------------------------------------------------------------------------- readers
# Adapters: every description calls its reader as reader(root, split, label).


def _cifar10(root, split, label):
    return readers.read_cifar10(root, split)


def _cifar100(root, split, label):
    return readers.read_cifar100(root, split, label)


def _svhn(root, split, label):
    return readers.read_svhn(root, split)


def _imagenet(root, split, label):
    return readers.read_imagenet(root, split)


def _mnist(root, split, label):
    return readers.read_mnist(root, split)


def _digits(root, split, label):
    return readers.read_digits(split)


_CIFAR_MEAN = {"train+test": ("train", "test"), "train": ("train",)}

DATASETS: dict = {
    d.name: d
    for d in (
        Dataset(
            "cifar10",
            "CIFAR-10",
            _cifar10,
            (32, 32, 3),
            10,
            {"train": 50000, "test": 10000},
            mean_splits=_CIFAR_MEAN,
            normalisation="mean-image/128",
            train_augmentors="cifar_train",
            sources=(
                Source(
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a",
                    "cifar-10-batches-py",
                    "",
                ),
            ),
            layout="<root>/cifar-10-batches-py/{data_batch_1..5,test_batch[,batches.meta]}",
            how_to_get="run `make data-cifar10` or unpack cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html there (see data/README.md)",
        ),
        Dataset(
            "cifar100",
            "CIFAR-100",
            _cifar100,
            (32, 32, 3),
            100,
            {"train": 50000, "test": 10000},
            mean_splits=_CIFAR_MEAN,
            normalisation="mean-image/128",
            train_augmentors="cifar_train",
            labels=("fine", "coarse"),
            sources=(
                Source(
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    "cifar-100-python.tar.gz",
                    "eb9058c3a382ffc7106e4002c42a8d85",
                    "cifar-100-python",
                    "",
                ),
            ),
            layout="<root>/cifar-100-python/{train,test[,meta]} (fine labels; coarse optional)",
            how_to_get="run `make data-cifar100` or unpack cifar-100-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html there (see data/README.md)",
        ),
        Dataset(
            # "train" is train+extra (604,388 images, as the paper); tensorpack's
            # SVHNDigit.get_per_pixel_mean averages train, test and extra: "train+test" here.
            "svhn",
            "SVHN",
            _svhn,
            (32, 32, 3),
            10,
            {"train": 604388, "train-only": 73257, "extra": 531131, "test": 26032},
            mean_splits=_CIFAR_MEAN,
            normalisation="mean-image/128",
            train_augmentors="svhn_train",
            train_raw_dtype=np.float32,  # the float canvas of tensorpack 0.2.0 (augment.py)
            # MD5s as published with torchvision's SVHN dataset (widely used, agree with the
            # files served by ufldl.stanford.edu).
            sources=(
                Source(
                    "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                    "train_32x32.mat",
                    "e26dedcc434d2e4c54c9b2d4a06d8373",
                    None,
                    "svhn",
                ),
                Source(
                    "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                    "test_32x32.mat",
                    "eb5a983be6a315427106f1b164d9cef3",
                    None,
                    "svhn",
                ),
                Source(
                    "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat",
                    "extra_32x32.mat",
                    "a93ce644f1a588dc4d68dda5feec44a7",
                    None,
                    "svhn",
                ),
            ),
            layout="<root>/svhn/{train,extra,test}_32x32.mat (label 10 is the digit 0)",
            how_to_get="run `make data-svhn` or put {train,extra,test}_32x32.mat from "
            "http://ufldl.stanford.edu/housenumbers/ there (see data/README.md)",
        ),
        Dataset(
            "imagenet",
            "ImageNet (ILSVRC-2012)",
            _imagenet,
            (224, 224, 3),
            1000,
            {"train": 1281167, "val": 50000},
            eval_split="val",
            normalisation="imagenet-mean-std",
            train_augmentors="imagenet_train",
            eval_augmentors="imagenet_val",
            top5=True,
            quirks=("channel_order", "saturation"),
            layout="<root>/imagenet/train/<wnid>/*.JPEG; val/<wnid>/*.JPEG or flat val/*.JPEG "
            "labelled by val.txt or the devkit's ILSVRC2012_validation_ground_truth.txt "
            "+ meta.mat; optional synsets.txt (class order)",
            how_to_get="put the ILSVRC-2012 train/ and val/ folders there by hand "
            "(see data/README.md)",
        ),
        Dataset(
            # The gates paper trains its MNIST nets on raw pixels: no augmentation.
            "mnist",
            "MNIST",
            _mnist,
            (28, 28, 1),
            10,
            {"train": 60000, "test": 10000},
            layout="<root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
            how_to_get="put the four MNIST IDX files (train-/t10k- images/labels, gzipped or "
            "not) there (see data/README.md)",
        ),
        Dataset(
            # scikit-learn's 1,797 8×8 digits have no official split: the first 1,437 (80 %)
            # train, the last 360 test (readers.DIGITS_TRAIN). Fed like MNIST.
            "digits",
            "scikit-learn digits",
            _digits,
            (8, 8, 1),
            10,
            {"train": readers.DIGITS_TRAIN, "test": 1797 - readers.DIGITS_TRAIN},
            embedded=True,
            stored_levels=readers.DIGITS_LEVELS,
            layout="none: scikit-learn's 8×8 handwritten digits ship inside that package",
            how_to_get="it ships with scikit-learn: pip install scikit-learn",
        ),
    )
}


def names() -> tuple:
    """The dataset names, in the order of the descriptions."""
    return tuple(DATASETS)


def get(name: str) -> Dataset:
    """The description of dataset `name`; UserError naming the known ones otherwise."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def downloadable() -> dict:
    """{name: [Source, ...]} of the datasets `make data-<name>` fetches."""
    return {d.name: list(d.sources) for d in DATASETS.values() if d.sources}


def describe(d: Dataset) -> str:
    """A few lines about `d` (``epsresnet data list``)."""
    splits = ", ".join(f"{s} {n:,}" for s, n in d.splits.items())
    h, w, c = d.image_shape
    fetch = (
        f"`make data-{d.name}`"
        if d.sources
        else ("ships in a package" if d.embedded else "by hand")
    )
    augs = f"{d.train_augmentors or 'none'} (train), {d.eval_augmentors or 'none'} (eval)"
    return (
        f"{d.name}: {d.title}, {h}×{w}×{c}, {d.num_classes} classes"
        + (", top-5 scored" if d.top5 else "")
        + "\n"
        f"  splits {splits}; trains on {d.train_split}, evaluates on {d.eval_split}\n"
        f"  normalisation {d.normalisation}; augmentation {augs}; get it: {fetch}\n"
        f"  layout: {d.layout}"
    )


def read_split(name: str, split: str, data_dir: Any, *, label: str = "fine"):
    """Split `split` of dataset `name` under `data_dir`, read as its description says."""
    return get(name).read(split, data_dir, label=label)
