"""Readers for the official dataset formats, any number of images per file.

Every reader takes a *data root* (``data/`` by default) and finds its dataset folder under
it by the official name, or accepts the dataset folder itself. Which reader a dataset uses,
its expected layout and how to get it are facts of its description
(:mod:`epsresnet_tf.data.datasets`, ``epsresnet data list`` prints them); this module owns
the file formats only.

The data root defaults to ``$EPSRESNET_DATA`` or ``data`` (:func:`default_data_dir`), the
same default for every command; ``make`` passes its ``DATA=`` as ``--data-dir``.

Small datasets are read whole into :class:`ArrayData` (uint8 NHWC images, int32 labels);
ImageNet into :class:`FileData` (paths + labels; JPEGs are decoded by the pipeline, where
undecodable files are skipped and counted). Every problem a user can fix raises
:class:`epsresnet_tf.errors.UserError` with one line naming the file and the fix.

tensorpack's own ``Cifar10``/``Cifar100``/``SVHNDigit``/``Mnist`` readers are not used: they
hard-code 10,000 (50,000) images per CIFAR file and download whenever a folder is missing.
"""

import codecs
import gzip
import importlib
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from epsresnet_tf.errors import UserError


def default_data_dir() -> str:
    """The data root when none is given: ``$EPSRESNET_DATA``, else ``data``."""
    return os.environ.get("EPSRESNET_DATA") or "data"


class DataFileError(UserError):
    """A dataset file exists but cannot be read (truncated, corrupt, wrong format)."""


@dataclass
class _Split:
    """What every split has: ``labels`` int32 (N,), the class count and names, its source."""

    labels: np.ndarray
    num_classes: int
    class_names: list = field(default_factory=list)
    source: str = ""

    def __len__(self):
        return len(self.labels)


@dataclass(init=False)
class ArrayData(_Split):
    """A split held in memory: ``images`` uint8 (N, H, W, C), ``labels`` int32 (N,)."""

    images: np.ndarray

    def __init__(self, images, labels, num_classes, class_names=None, source=""):
        super().__init__(labels, num_classes, list(class_names or []), source)
        self.images = images


@dataclass(init=False)
class FileData(_Split):
    """A split of image files: ``paths`` (list of str), ``labels`` int32 (N,)."""

    paths: list

    def __init__(self, paths, labels, num_classes, class_names=None, source=""):
        super().__init__(labels, num_classes, list(class_names or []), source)
        self.paths = paths


class DataNeeded(UserError):
    """A dataset's file or folder is missing or incomplete. The message says what; the
    dataset's description (datasets.Dataset.read) adds how to get it, the text it owns."""


def _missing(name, path):
    return DataNeeded(f"{name}: expected {path} — it is missing")


def _find_folder(root, name, folder, marker):
    """`root/folder` if it holds `marker`, else `root` itself if it does."""
    root = Path(root)
    for cand in (root / folder, root):
        if (cand / marker).exists():
            return cand
    raise _missing(name, root / folder / marker)


# ----------------------------------------------------------------------------- CIFAR


#: Every global a CIFAR-10/100 "python version" pickle names, or one re-saved with numpy:
#: numpy's array and scalar reconstruction (numpy 1 writes `numpy.core`, numpy 2
#: `numpy._core`; protocol 5 `_frombuffer`), ndarray and dtype; and `_codecs.encode`, with which Python 3 writes bytes at protocol 2 (as
#: `torch.load(weights_only=True)` allows it). Everything else in those files is dicts,
#: lists, bytes, str and ints.
_CIFAR_GLOBALS = {
    (core + module, name)
    for core in ("numpy.core.", "numpy._core.")
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _RefusedGlobal(Exception):
    """A pickle asked for a global outside _CIFAR_GLOBALS (nothing was called)."""


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only _CIFAR_GLOBALS (the approach of
    `torch.load(weights_only=True)`): a pickle runs code only through the globals it names,
    so a file that names anything else (`os.system` in a `__reduce__`) is refused before
    any of it is called. pickle itself has no such mode, hence the subclass."""

    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        if module.startswith("numpy."):  # the same functions under numpy 1's and 2's name
            try:
                module = importlib.import_module("numpy._core." + module.split(".", 2)[2])
            except ImportError:
                module = importlib.import_module("numpy.core." + module.split(".", 2)[2])
            return getattr(module, name)
        return codecs.encode if module == "_codecs" else getattr(np, name)


def _load_pickle(path):
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except _RefusedGlobal as err:
        raise DataFileError(
            f"refused {path}: it asks to load {err}, which no official CIFAR pickle "
            "holds (nothing in it was run); fetch the dataset again from its official source"
        ) from None
    except Exception as err:  # truncated/corrupt pickles raise many different types
        raise DataFileError(
            f"cannot read {path}: not a valid CIFAR pickle "
            f"({type(err).__name__}: {err}); delete it and fetch it again"
        ) from err


def _key(d, name):
    """CIFAR dicts have bytes keys under encoding='bytes'; accept str keys too."""
    if name.encode() in d:
        return d[name.encode()]
    if name in d:
        return d[name]
    raise KeyError(name)


def _check_labels(path, labels, classes):
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataFileError(
            f"cannot read {path}: labels span {labels.min()}..{labels.max()}, "
            f"expected 0..{classes - 1}; delete it and fetch it again"
        )


def _cifar_batch(path, label_key, classes):
    d = _load_pickle(path)
    try:
        data = np.asarray(_key(d, "data"), dtype=np.uint8)
        labels = np.asarray(_key(d, label_key), dtype=np.int32)
    except (KeyError, TypeError, ValueError) as err:
        raise DataFileError(
            f"cannot read {path}: missing or bad key {err} in the CIFAR pickle; "
            "delete it and fetch it again"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataFileError(
            f"cannot read {path}: data has shape {data.shape} with "
            f"{len(labels)} labels, expected (N, 3072) with N labels"
        )
    _check_labels(path, labels, classes)
    # Official rows are channel-major (1024 R, 1024 G, 1024 B): -> N, 32, 32, 3.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _names(path, key):
    if not path.exists():
        return []
    try:
        return [
            n.decode() if isinstance(n, bytes) else str(n) for n in _key(_load_pickle(path), key)
        ]
    except (KeyError, DataFileError):
        return []


def read_cifar10(root: Path, split: str) -> ArrayData:
    folder = _find_folder(root, "cifar10", "cifar-10-batches-py", "test_batch")
    if split == "train":
        files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    elif split == "test":
        files = [folder / "test_batch"]
    else:
        raise UserError(f"cifar10 has splits train and test, not {split!r}")
    for f in files:
        if not f.exists():
            raise _missing("cifar10", f)
    parts = [_cifar_batch(f, "labels", 10) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayData(
        images, labels, 10, _names(folder / "batches.meta", "label_names"), str(folder)
    )


def read_cifar100(root: Path, split: str, label: str = "fine") -> ArrayData:
    if label not in ("fine", "coarse"):
        raise UserError(f"cifar100 labels are 'fine' or 'coarse', not {label!r}")
    folder = _find_folder(root, "cifar100", "cifar-100-python", "test")
    if split not in ("train", "test"):
        raise UserError(f"cifar100 has splits train and test, not {split!r}")
    f = folder / split
    if not f.exists():
        raise _missing("cifar100", f)
    classes = 100 if label == "fine" else 20
    images, labels = _cifar_batch(f, f"{label}_labels", classes)
    return ArrayData(
        images, labels, classes, _names(folder / "meta", f"{label}_label_names"), str(folder)
    )


# ----------------------------------------------------------------------------- SVHN

SVHN_FILES = {"train": "train_32x32.mat", "extra": "extra_32x32.mat", "test": "test_32x32.mat"}


def _svhn_mat(path):
    import scipy.io

    if not path.exists():
        raise _missing("svhn", path)
    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as err:  # scipy raises ValueError/TypeError/OSError/KeyError on bad files
        raise DataFileError(
            f"cannot read {path}: not a valid SVHN .mat file "
            f"({type(err).__name__}: {err}); delete it and fetch it again"
        ) from err
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DataFileError(
            f"cannot read {path}: X has shape {x.shape} and y {y.shape}, "
            "expected 32x32x3xN and N labels"
        )
    images = np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)).astype(np.uint8))
    labels = y.reshape(-1).astype(np.int32)
    labels[labels == 10] = 0  # the .mat files label the digit 0 as 10
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataFileError(f"cannot read {path}: labels outside 1..10")
    return images, labels


def read_svhn(root: Path, split: str) -> ArrayData:
    """Splits: ``train`` = train+extra (604,388 images, as the paper), ``train-only``,
    ``extra``, ``test``."""
    root = Path(root)
    folder = root / "svhn" if (root / "svhn").is_dir() else root
    names = {
        "train": ["train", "extra"],
        "train-only": ["train"],
        "extra": ["extra"],
        "test": ["test"],
    }.get(split)
    if names is None:
        raise UserError(
            f"svhn has splits train (train+extra), train-only, extra and test, not {split!r}"
        )
    if folder == root and not any((root / SVHN_FILES[n]).exists() for n in names):
        folder = root / "svhn"
    parts = [_svhn_mat(folder / SVHN_FILES[n]) for n in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ArrayData(images, labels, 10, [str(i) for i in range(10)], str(folder))


# ----------------------------------------------------------------------------- MNIST


def _open_maybe_gz(folder, stem):
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.exists():
            return p, (gzip.open if name.endswith(".gz") else open)
    raise _missing("mnist", folder / (stem + "[.gz]"))


def _read_idx(folder, stem, magic, ndim):
    path, opener = _open_maybe_gz(folder, stem)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        (got_magic,) = struct.unpack(">I", raw[:4])
        if got_magic != magic:
            raise ValueError(f"magic number {got_magic}, expected {magic}")
        dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if arr.size != int(np.prod(dims)):
            raise ValueError(f"header says {dims} but the file holds {arr.size} bytes of data")
    # zlib.error: a .gz whose compressed bytes are damaged (gzip raises it, not OSError).
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as err:
        raise DataFileError(
            f"cannot read {path}: not a valid IDX file ({err}); delete it and fetch it again"
        ) from err
    return path, arr.reshape(dims)


def read_mnist(root: Path, split: str) -> ArrayData:
    root = Path(root)
    folder = root / "mnist" if (root / "mnist").is_dir() else root
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise UserError(f"mnist has splits train and test, not {split!r}")
    ipath, images = _read_idx(folder, f"{prefix}-images-idx3-ubyte", 2051, 3)
    lpath, labels = _read_idx(folder, f"{prefix}-labels-idx1-ubyte", 2049, 1)
    if len(images) != len(labels):
        raise DataFileError(f"{ipath} holds {len(images)} images but {lpath} {len(labels)} labels")
    _check_labels(lpath, labels, 10)
    return ArrayData(
        np.ascontiguousarray(images[..., None]),
        labels.astype(np.int32),
        10,
        [str(i) for i in range(10)],
        str(folder),
    )


# ----------------------------------------------------------------------------- digits

#: scikit-learn's digits have no official split: the first 1,437 images (80 %) train, the
#: last 360 test (the classes cycle through the file, so both splits hold every digit).
DIGITS_TRAIN = 1437
#: scikit-learn's digits store pixels as 0–16 (16 levels of ink); the reader scales them to
#: uint8 0–255, rint(x · 255/16), so they are fed like every other dataset's.
DIGITS_LEVELS = 16


def read_digits(split: str) -> ArrayData:
    """scikit-learn's 1,797 handwritten digits (8×8, UCI optdigits), read from the copy the
    package ships, so `make demo` needs no download. Pixels 0–16 are scaled to uint8 0–255."""
    if split not in ("train", "test"):
        raise UserError(f"digits has splits train and test, not {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataNeeded("digits: scikit-learn is not installed") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / DIGITS_LEVELS)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    part = slice(None, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return ArrayData(
        np.ascontiguousarray(images[part]),
        labels[part],
        10,
        [str(i) for i in range(10)],
        "sklearn.datasets.load_digits",
    )


# ----------------------------------------------------------------------------- ImageNet

IMAGE_EXTS = (".jpeg", ".jpg", ".png")
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def _images_in(folder):
    return sorted(
        str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()
    )


def _devkit_file(folder, name):
    """`name` from the official devkit, in the dataset folder or its unpacked devkit."""
    for cand in (folder / name, folder / "ILSVRC2012_devkit_t12" / "data" / name):
        if cand.exists():
            return cand
    return None


def _devkit_synsets(path):
    """{ILSVRC2012_ID: wnid} of the 1,000 leaf synsets in the devkit's ``meta.mat``."""
    import scipy.io

    try:
        synsets = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
        return {
            int(i): str(w)
            for i, w, c in zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"])
            if int(c) == 0
        }
    except Exception as err:  # scipy raises ValueError/TypeError/OSError/KeyError on bad files
        raise DataFileError(
            f"cannot read {path}: not the devkit's meta.mat "
            f"({type(err).__name__}: {err}); unpack ILSVRC2012_devkit_t12 again"
        ) from err


def imagenet_synsets(folder: Path) -> list:
    """Class order: ``synsets.txt`` (first token per line) if present, else the sorted train/
    folders, else the sorted leaf synsets of the devkit's ``meta.mat`` — the last two agree
    on the full dataset, and with the caffe/tensorpack order that ``val.txt`` indexes."""
    meta = folder / "synsets.txt"
    if meta.exists():
        wnids = [line.split()[0] for line in meta.read_text().splitlines() if line.strip()]
        if not wnids:
            raise DataFileError(f"cannot read {meta}: no synsets in it")
        return wnids
    train = folder / "train"
    if train.is_dir():
        return sorted(p.name for p in train.iterdir() if p.is_dir())
    devkit_meta = _devkit_file(folder, "meta.mat")
    if devkit_meta is not None:
        return sorted(_devkit_synsets(devkit_meta).values())
    raise DataNeeded(
        f"imagenet: need {meta}, the {train} folders or the devkit's meta.mat to "
        "fix the class order"
    )


def _val_txt_labels(label_file, index, num_classes):
    """caffe's ``val.txt``: "<file> <class index or wnid>" per line."""
    names, labels = [], []
    for n, line in enumerate(label_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DataFileError(f"{label_file}:{n}: expected '<file> <label>', got {line!r}")
        lab = int(parts[1]) if parts[1].isdigit() else index.get(parts[1])
        if lab is None or not 0 <= lab < num_classes:
            raise DataFileError(f"{label_file}:{n}: unknown label {parts[1]!r}")
        names.append(parts[0])
        labels.append(lab)
    return names, labels


def _devkit_val_labels(truth_file, meta_file, index):
    """The devkit's ground truth: line i holds the ILSVRC2012_ID of ILSVRC2012_val_<i>.JPEG."""
    wnid_of = _devkit_synsets(meta_file)
    names, labels = [], []
    for n, line in enumerate(truth_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid = wnid_of.get(int(line)) if line.strip().isdigit() else None
        if wnid not in index:
            raise DataFileError(
                f"{truth_file}:{n}: {line.strip()!r} is not the ILSVRC2012_ID "
                f"of one of the {len(index)} classes"
            )
        names.append(f"ILSVRC2012_val_{n:08d}.JPEG")
        labels.append(index[wnid])
    return names, labels


def _flat_split_labels(folder, split_dir, index, num_classes):
    """(paths, labels) of a flat split from its label file; every listed file must exist."""
    val_txt = next((p for p in (folder / "val.txt", split_dir / "val.txt") if p.exists()), None)
    truth = _devkit_file(folder, DEVKIT_GROUND_TRUTH)
    devkit_meta = _devkit_file(folder, "meta.mat")
    if val_txt is not None:
        label_file = val_txt
        names, labels = _val_txt_labels(val_txt, index, num_classes)
    elif truth is not None and devkit_meta is not None:
        label_file = truth
        names, labels = _devkit_val_labels(truth, devkit_meta, index)
    else:
        raise UserError(
            f"imagenet: {split_dir} is flat, so it needs a label file: "
            f"{folder / 'val.txt'} ('<file> <class index or wnid>' per line) or the "
            f"devkit's {DEVKIT_GROUND_TRUTH} and meta.mat in {folder}"
        )
    paths = [str(split_dir / name) for name in names]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise UserError(
            f"imagenet: {len(missing)} of the {len(paths)} images listed in "
            f"{label_file} are missing, e.g. {missing[0]}; put them there or "
            "remove their lines"
        )
    return paths, labels


def read_imagenet(root: Path, split: str) -> FileData:
    root = Path(root)
    folder = root / "imagenet" if (root / "imagenet").is_dir() else root
    if split == "test":
        split = "val"
    if split not in ("train", "val"):
        raise UserError(f"imagenet has splits train and val, not {split!r}")
    split_dir = folder / split
    if not split_dir.is_dir():
        raise _missing("imagenet", split_dir)
    wnids = imagenet_synsets(folder)
    index = {w: i for i, w in enumerate(wnids)}
    subdirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    paths, labels = [], []
    if subdirs:
        for d in subdirs:
            if d.name not in index:
                raise DataFileError(f"imagenet: folder {d} is not one of the {len(wnids)} synsets")
            files = _images_in(d)
            paths += files
            labels += [index[d.name]] * len(files)
    else:
        paths, labels = _flat_split_labels(folder, split_dir, index, len(wnids))
    if not paths:
        raise DataNeeded(f"imagenet: no images under {split_dir}")
    return FileData(paths, np.asarray(labels, np.int32), len(wnids), wnids, str(split_dir))
