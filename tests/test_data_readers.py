"""Readers: the real subsets in ../shared/data and small files written in the official formats."""

import gzip
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from epsresnet_tf.data import datasets, readers
from epsresnet_tf.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_SUBSET = SHARED / "cifar10-subset"
MNIST_SUBSET = SHARED / "mnist-subset"
needs_shared = pytest.mark.skipif(
    not (CIFAR_SUBSET.is_dir() and MNIST_SUBSET.is_dir()),
    reason=f"the real CIFAR-10/MNIST subsets are not at {SHARED} on this machine",
)


def _raw_cifar(files):
    """Independent reading: pickle + numpy, no project code."""
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d["labels"]))
    return np.concatenate(xs), np.concatenate(ys)


@needs_shared
def test_cifar10_subset_counts_histogram_and_pixels():
    folder = CIFAR_SUBSET / "cifar-10-batches-py"
    train = datasets.read_split("cifar10", "train", CIFAR_SUBSET)
    test = datasets.read_split("cifar10", "test", CIFAR_SUBSET)
    assert len(train) == 5085 and len(test) == 1017
    x, y = _raw_cifar([folder / f"data_batch_{i}" for i in range(1, 6)])
    np.testing.assert_array_equal(
        np.bincount(train.labels, minlength=10), np.bincount(y, minlength=10)
    )
    np.testing.assert_array_equal(train.labels, y)
    np.testing.assert_array_equal(train.images, x)
    # Channel-major rows: pixel (0, 0) of image 0 is data[0, 0], data[0, 1024], data[0, 2048].
    with open(folder / "data_batch_1", "rb") as fh:
        row = pickle.load(fh, encoding="bytes")[b"data"][0]
    assert tuple(train.images[0, 0, 0]) == (row[0], row[1024], row[2048])
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (32, 32, 3)
    assert train.num_classes == 10 and len(train.class_names) == 10
    # Also reachable by pointing at the dataset folder itself.
    assert len(datasets.read_split("cifar10", "test", folder)) == 1017


@needs_shared
def test_mnist_subset_counts_and_pixels():
    train = datasets.read_split("mnist", "train", MNIST_SUBSET)
    test = datasets.read_split("mnist", "test", MNIST_SUBSET)
    assert len(train) == 3678 and len(test) == 3678
    with gzip.open(MNIST_SUBSET / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(MNIST_SUBSET / "t10k-labels-idx1-ubyte.gz") as f:
        lab = np.frombuffer(f.read(), np.uint8, offset=8)
    np.testing.assert_array_equal(test.images[..., 0], raw)
    np.testing.assert_array_equal(test.labels, lab)
    assert train.images.shape == (3678, 28, 28, 1)


def test_mnist_uncompressed_and_truncated(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        np.array([2051, 5, 28, 28], ">u4").tobytes() + imgs.tobytes()
    )
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        np.array([2049, 5], ">u4").tobytes() + bytes([3, 1, 4, 1, 5])
    )
    d = datasets.read_split("mnist", "train", tmp_path)
    np.testing.assert_array_equal(d.images[..., 0], imgs)
    assert list(d.labels) == [3, 1, 4, 1, 5]
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(np.array([2051, 5, 28, 28], ">u4").tobytes() + imgs.tobytes()[:-10])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        np.array([2049, 5], ">u4").tobytes() + bytes(5)
    )
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz"):
        datasets.read_split("mnist", "test", tmp_path)


def _write_cifar_batch(path, n, rng, label_keys=("labels",), classes=10):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    d = {b"batch_label": b"testing batch", b"data": data}
    labels = {}
    for k in label_keys:
        labels[k] = list(rng.integers(0, classes if k != "coarse_labels" else 20, n))
        d[k.encode()] = labels[k]
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return data, labels


def test_cifar100_official_pickles_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data, labels = _write_cifar_batch(
        folder / "train", 37, rng, ("fine_labels", "coarse_labels"), 100
    )
    _write_cifar_batch(folder / "test", 11, rng, ("fine_labels", "coarse_labels"), 100)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
            },
            f,
        )
    fine = datasets.read_split("cifar100", "train", tmp_path)
    coarse = datasets.read_split("cifar100", "train", tmp_path, label="coarse")
    assert len(fine) == 37 and len(datasets.read_split("cifar100", "test", tmp_path)) == 11
    np.testing.assert_array_equal(fine.labels, labels["fine_labels"])
    np.testing.assert_array_equal(coarse.labels, labels["coarse_labels"])
    assert fine.num_classes == 100 and coarse.num_classes == 20 and fine.class_names[7] == "f7"
    np.testing.assert_array_equal(
        fine.images[5, 2, 3], data[5, [2 * 32 + 3, 1024 + 2 * 32 + 3, 2048 + 2 * 32 + 3]]
    )


def test_cifar_any_batch_length_and_corrupt_pickle(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    sizes = [3, 7, 1, 2, 5]
    for i, n in enumerate(sizes, 1):
        _write_cifar_batch(folder / f"data_batch_{i}", n, rng)
    _write_cifar_batch(folder / "test_batch", 4, rng)
    assert len(datasets.read_split("cifar10", "train", tmp_path)) == sum(sizes)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="test_batch") as err:
        datasets.read_split("cifar10", "test", tmp_path)
    assert "\n" not in str(err.value)


class _RunsCode:
    """What a malicious pickle carries: unpickling it calls os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["the whole file", "the data key", "a label"])
def test_a_cifar_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, where, capsys):
    from epsresnet_tf import cli

    folder = tmp_path / "evil" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 3, rng)
    _write_cifar_batch(folder / "test_batch", 3, rng)
    created = tmp_path / "created-by-the-payload"
    payload = _RunsCode(f"touch {created}")
    evil = {
        "the whole file": payload,
        "the data key": {b"data": payload, b"labels": [0]},
        "a label": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload]},
    }[where]
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    # the payload is real: plain pickle runs it
    pickle.loads(pickle.dumps(_RunsCode(f"touch {created}.plain")))
    assert Path(f"{created}.plain").exists()

    with pytest.raises(UserError) as err:
        datasets.read_split("cifar10", "train", tmp_path / "evil")
    msg = str(err.value)
    assert "data_batch_1" in msg and "system" in msg and "\n" not in msg, msg
    assert cli.main(["data", "check", "cifar10", "--data-dir", str(tmp_path / "evil")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err_lines) == 1
        and "refused" in err_lines[0]
        and "nothing in it was run" in err_lines[0]
    )
    assert not created.exists()
    # the official-format files beside it still read, at every pickle protocol
    for protocol in (2, 4, 5):
        data = {b"data": np.arange(3072, dtype=np.uint8)[None], b"labels": [7]}
        (folder / "test_batch").write_bytes(pickle.dumps(data, protocol=protocol))
        test = datasets.read_split("cifar10", "test", tmp_path / "evil")
        assert test.labels.tolist() == [7] and test.images[0, 0, 1, 0] == 1


def test_missing_files_name_the_path_and_the_fix(tmp_path):
    for name, hint in [
        ("cifar10", "make data-cifar10"),
        ("cifar100", "make data-cifar100"),
        ("svhn", "make data-svhn"),
        ("mnist", "README"),
        ("imagenet", "README"),
    ]:
        with pytest.raises(UserError) as err:
            datasets.read_split(name, "train", tmp_path)
        msg = str(err.value)
        assert str(tmp_path) in msg and hint in msg and "\n" not in msg, msg
    with pytest.raises(UserError, match="unknown dataset"):
        datasets.read_split("stl10", "train", tmp_path)


def _write_svhn(path, n, rng):
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10
    scipy.io.savemat(str(path), {"X": x, "y": y})
    return x, y


def test_svhn_mat_label_10_is_zero_and_train_mixes_extra(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "svhn"
    folder.mkdir()
    xt, yt = _write_svhn(folder / "train_32x32.mat", 9, rng)
    xe, ye = _write_svhn(folder / "extra_32x32.mat", 6, rng)
    _write_svhn(folder / "test_32x32.mat", 4, rng)
    only = datasets.read_split("svhn", "train-only", tmp_path)
    assert only.labels[0] == 0 and set(only.labels) <= set(range(10))
    np.testing.assert_array_equal(only.labels, np.where(yt[:, 0] == 10, 0, yt[:, 0]))
    np.testing.assert_array_equal(only.images[4], xt[:, :, :, 4])
    both = datasets.read_split("svhn", "train", tmp_path)
    assert len(both) == 15
    np.testing.assert_array_equal(both.images[9 + 2], xe[:, :, :, 2])
    assert len(datasets.read_split("svhn", "test", tmp_path)) == 4
    (folder / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(50))
    with pytest.raises(UserError, match="test_32x32.mat"):
        datasets.read_split("svhn", "test", tmp_path)


def write_imagenet_tree(root, rng, corrupt=True, flat_val=True):
    """train/<wnid>/*.JPEG of different sizes (+ one corrupt file), val flat + val.txt."""
    sizes = [(40, 60), (75, 50), (64, 64), (33, 90)]
    wnids = ["n01440764", "n01443537", "n01484850"]
    truth = {}
    for c, w in enumerate(wnids):
        d = root / "train" / w
        d.mkdir(parents=True)
        for k, (h, wd) in enumerate(sizes[: 2 + c % 2]):
            p = d / f"{w}_{k}.JPEG"
            cv2.imwrite(str(p), rng.integers(0, 256, (h, wd, 3), dtype=np.uint8))
            truth[str(p)] = c
    bad = None
    if corrupt:
        bad = root / "train" / wnids[1] / f"{wnids[1]}_bad.JPEG"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        truth[str(bad)] = 1
    val = root / "val"
    val.mkdir()
    lines = []
    for k in range(4):
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        cv2.imwrite(str(val / name), rng.integers(0, 256, (50 + 10 * k, 70, 3), dtype=np.uint8))
        lines.append(f"{name} {k % 3 if k < 3 else wnids[2]}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return wnids, truth, bad


def test_imagenet_tree_synsets_from_train_and_flat_val(tmp_path):
    wnids, truth, bad = write_imagenet_tree(tmp_path / "imagenet", np.random.default_rng(4))
    train = datasets.read_split("imagenet", "train", tmp_path)
    assert train.class_names == sorted(wnids) and train.num_classes == 3
    assert dict(zip(train.paths, train.labels.tolist())) == truth
    val = datasets.read_split("imagenet", "val", tmp_path)
    assert val.labels.tolist() == [0, 1, 2, 2] and all(Path(p).exists() for p in val.paths)
    # A synsets.txt fixes another order.
    (tmp_path / "imagenet" / "synsets.txt").write_text(
        "\n".join(f"{w} some words" for w in reversed(wnids)) + "\n"
    )
    train2 = datasets.read_split("imagenet", "train", tmp_path)
    assert {p: l for p, l in zip(train2.paths, train2.labels)} == {
        p: 2 - l for p, l in truth.items()
    }


def test_imagenet_val_by_folder(tmp_path):
    root = tmp_path / "imagenet"
    write_imagenet_tree(root, np.random.default_rng(5), corrupt=False)
    (root / "val.txt").unlink()
    for p in list((root / "val").iterdir()):
        p.unlink()
    (root / "val" / "n01484850").mkdir()
    cv2.imwrite(str(root / "val" / "n01484850" / "a.JPEG"), np.zeros((30, 30, 3), np.uint8))
    val = datasets.read_split("imagenet", "val", root)
    assert val.labels.tolist() == [2]
    (root / "val" / "n99999999").mkdir()
    with pytest.raises(UserError, match="n99999999"):
        datasets.read_split("imagenet", "val", root)


def test_cifar_missing_batch_and_labels_out_of_range(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in (1, 2, 4, 5):
        _write_cifar_batch(folder / f"data_batch_{i}", 3, rng)
    _write_cifar_batch(folder / "test_batch", 3, rng)
    with pytest.raises(UserError) as err:
        datasets.read_split("cifar10", "train", tmp_path)
    assert str(folder / "data_batch_3") in str(err.value) and "make data-cifar10" in str(err.value)
    with open(folder / "test_batch", "wb") as f:  # a label 10 in CIFAR-10
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, f)
    with pytest.raises(readers.DataFileError, match="test_batch.*0..9"):
        datasets.read_split("cifar10", "test", tmp_path)
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    _write_cifar_batch(c100 / "test", 4, rng, ("fine_labels", "coarse_labels"), 100)
    with open(c100 / "train", "wb") as f:  # a fine label of 100
        pickle.dump(
            {
                b"data": np.zeros((2, 3072), np.uint8),
                b"fine_labels": [99, 100],
                b"coarse_labels": [19, 0],
            },
            f,
        )
    with pytest.raises(readers.DataFileError, match="train.*0..99"):
        datasets.read_split("cifar100", "train", tmp_path)
    assert datasets.read_split("cifar100", "train", tmp_path, label="coarse").labels.tolist() == [
        19,
        0,
    ]


def test_svhn_truncated_mat_names_the_file(tmp_path):
    (tmp_path / "svhn").mkdir()
    path = tmp_path / "svhn" / "test_32x32.mat"
    _write_svhn(path, 40, np.random.default_rng(7))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # a download cut in half
    with pytest.raises(readers.DataFileError) as err:
        datasets.read_split("svhn", "test", tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_imagenet_flat_val_with_a_missing_listed_file(tmp_path):
    root = tmp_path / "imagenet"
    write_imagenet_tree(root, np.random.default_rng(8), corrupt=False)
    gone = root / "val" / "ILSVRC2012_val_00000002.JPEG"
    gone.unlink()
    with pytest.raises(UserError) as err:
        datasets.read_split("imagenet", "val", tmp_path)
    msg = str(err.value)
    assert "1 of the 4" in msg and str(gone) in msg and str(root / "val.txt") in msg
    (root / "val.txt").unlink()
    with pytest.raises(UserError, match="val.txt.*ILSVRC2012_validation_ground_truth.txt"):
        datasets.read_split("imagenet", "val", tmp_path)


def _write_devkit_meta(path, leaves):
    """The devkit's meta.mat: a 'synsets' struct array, leaves first with ILSVRC2012_ID 1..K
    (in WordNet order, not sorted by wnid), then a non-leaf synset."""
    dt = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    rows = [
        (i + 1, w, f"words {i}", "gloss", 0, np.zeros((1, 0)), 0, 1300)
        for i, w in enumerate(leaves)
    ]
    rows.append(
        (
            len(leaves) + 1,
            "n00001740",
            "entity",
            "gloss",
            len(leaves),
            np.arange(1, len(leaves) + 1),
            18,
            0,
        )
    )
    arr = np.zeros((len(rows), 1), dtype=dt)
    for k, r in enumerate(rows):
        arr[k, 0] = r
    scipy.io.savemat(str(path), {"synsets": arr})


def test_imagenet_devkit_ground_truth_and_class_order(tmp_path):
    # Official ILSVRC-2012: flat val/ + ILSVRC2012_devkit_t12/data/{meta.mat, ground truth}.
    root = tmp_path / "imagenet"
    wnids, _, _ = write_imagenet_tree(root, np.random.default_rng(9), corrupt=False)
    (root / "val.txt").unlink()
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    devkit_order = [wnids[2], wnids[0], wnids[1]]  # ILSVRC2012_ID 1, 2, 3
    _write_devkit_meta(data / "meta.mat", devkit_order)
    ids = [3, 1, 2, 1]  # ground truth of val images 1..4
    (data / readers.DEVKIT_GROUND_TRUTH).write_text("".join(f"{i}\n" for i in ids))
    val = datasets.read_split("imagenet", "val", tmp_path)
    expect = [sorted(wnids).index(devkit_order[i - 1]) for i in ids]
    assert val.labels.tolist() == expect and val.class_names == sorted(wnids)
    assert [Path(p).name for p in val.paths] == [
        f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 5)
    ]
    # Without train/ and synsets.txt the class order is the devkit's sorted leaves: the same.
    import shutil

    shutil.rmtree(root / "train")
    again = datasets.read_split("imagenet", "val", tmp_path)
    assert again.labels.tolist() == expect and again.num_classes == 3
    (data / readers.DEVKIT_GROUND_TRUTH).write_text("1\n2\n7\n1\n")
    with pytest.raises(readers.DataFileError, match=r"ground_truth.txt:3"):
        datasets.read_split("imagenet", "val", tmp_path)
    (data / "meta.mat").write_bytes(b"not a mat file")
    with pytest.raises(readers.DataFileError, match="meta.mat"):
        datasets.read_split("imagenet", "val", tmp_path)


def test_default_data_dir_follows_epsresnet_data(monkeypatch, tmp_path):
    monkeypatch.delenv("EPSRESNET_DATA", raising=False)
    assert readers.default_data_dir() == "data"
    monkeypatch.setenv("EPSRESNET_DATA", str(tmp_path))
    assert readers.default_data_dir() == str(tmp_path)
