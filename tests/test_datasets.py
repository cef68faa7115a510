"""The dataset descriptions: one per dataset, every fact consistent with the readers, the
pipeline, the augmentation and the download that ask them."""

import numpy as np
import pytest

from epsresnet_tf.data import augment, datasets, download, pipeline
from epsresnet_tf.errors import UserError

ALL = ("cifar10", "cifar100", "svhn", "imagenet", "mnist", "digits")


def test_one_description_per_dataset_with_consistent_facts():
    assert datasets.names() == ALL
    for name in ALL:
        d = datasets.get(name)
        assert d.name == name and d.num_classes >= 10 and len(d.image_shape) == 3
        assert d.train_split in d.splits and d.eval_split in d.splits
        assert d.split("train") == d.train_split and d.split("test") == d.eval_split
        assert all(isinstance(n, int) and n > 0 for n in d.splits.values())
        assert d.normalisation in datasets.NORMALISATIONS
        assert d.has_mean_image == (d.normalisation == "mean-image/128")
        for mode, splits in d.mean_splits.items():
            assert mode in datasets.MEAN_MODES and set(splits) <= {"train", "test"}
        for builder in (d.train_augmentors, d.eval_augmentors):
            assert builder is None or builder in augment.BUILDERS
        assert d.how_to_get and d.layout
        assert d.embedded or d.sources or "README" in d.how_to_get
    with pytest.raises(UserError, match="unknown dataset 'stl10'; choose one of cifar10"):
        datasets.get("stl10")


def test_the_facts_the_paper_fixes():
    svhn = datasets.get("svhn")
    assert svhn.splits["train"] == svhn.splits["train-only"] + svhn.splits["extra"] == 604388
    inet = datasets.get("imagenet")
    assert (inet.eval_split, inet.top5, inet.image_shape, inet.num_classes) == (
        "val",
        True,
        (224, 224, 3),
        1000,
    )
    assert inet.split("test") == "val"
    assert not any(datasets.get(n).top5 for n in ALL if n != "imagenet")
    assert [n for n in ALL if datasets.get(n).embedded] == ["digits"]
    assert datasets.get("cifar100").labels == ("fine", "coarse")
    assert datasets.get("svhn").raw_dtype(True) == np.float32  # 0.2.0's float canvas
    assert datasets.get("svhn").raw_dtype(False) == np.uint8


def test_download_sources_are_the_descriptions():
    assert set(download.SOURCES) == {"cifar10", "cifar100", "svhn"}
    for name, rows in download.SOURCES.items():
        assert rows == list(datasets.get(name).sources)
        for url, fname, md5, _, _ in rows:
            assert url.endswith(fname) and len(md5) == 32


def test_missing_files_print_the_descriptions_fix(tmp_path):
    for name in ("cifar10", "cifar100", "svhn", "mnist", "imagenet"):
        with pytest.raises(UserError) as err:
            datasets.read_split(name, datasets.get(name).train_split, tmp_path)
        assert datasets.get(name).how_to_get in str(err.value)


def test_normalisation_of_a_known_pixel():
    mean = np.full((1, 1, 3), 100.0, np.float32)
    px = np.asarray([[[[228, 36, 100]]]], np.uint8)
    np.testing.assert_array_equal(
        datasets.get("cifar10").normalise(px, mean), [[[[1.0, -0.5, 0.0]]]]
    )
    with pytest.raises(ValueError, match="mean image"):
        datasets.get("svhn").normalise(px)
    inet = datasets.get("imagenet")
    rgb = inet.normalise(px)
    want = (np.asarray([228, 36, 100]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(rgb[0, 0, 0], want, atol=1e-6)  # float32 arithmetic
    bgr = inet.normalise(px, channel_order="authors-bgr")  # blue with red's mean/std
    np.testing.assert_allclose(bgr[0, 0, 0, 0], (100 / 255.0 - 0.485) / 0.229, rtol=1e-6)
    for name in ("mnist", "digits"):
        out = datasets.get(name).normalise(np.asarray([[[[255]], [[51]]]], np.uint8))
        assert out.dtype == np.float32 and out.ravel().tolist() == pytest.approx([1.0, 0.2])


def test_augmentors_follow_the_descriptions():
    assert augment.augmentor_list("cifar100", True) is not None
    assert augment.augmentor_list("cifar100", False) is None
    assert augment.augmentor_list("mnist", True) is None
    assert augment.augmentor_list("digits", False) is None
    assert augment.augmentor_list("imagenet", False) is not None


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar10-subset"), ("mnist", "mnist-subset")])
def test_real_subsets_agree_with_their_descriptions(shared_data, name, folder):
    d = datasets.get(name)
    root = shared_data / folder
    for role in ("train", "test"):
        data = d.read(d.split(role), root)
        assert data.num_classes == d.num_classes
        assert data.images.shape[1:] == d.image_shape and data.images.dtype == np.uint8
        assert set(np.unique(data.labels)) == set(range(d.num_classes))  # every class
        assert 0 < len(data) <= d.splits[d.split(role)]
    pipe = pipeline.make_pipeline(name, d.eval_split, root, 7, train=False)
    raw, _ = next(pipe.batches(0))
    np.testing.assert_array_equal(pipe.normalise_np(raw), d.normalise(raw, pipe.mean))
    assert (pipe.mean is not None) == d.has_mean_image


def test_digits_ship_in_the_package_and_match_their_sizes():
    d = datasets.get("digits")
    for split, n in d.splits.items():
        data = d.read(split, "no-such-folder")
        assert len(data) == n and data.images.shape[1:] == d.image_shape
        assert set(np.unique(data.labels)) == set(range(d.num_classes))


def test_data_list_prints_every_description(capsys):
    from epsresnet_tf import cli

    assert cli.main(["data", "list"]) in (0, None)
    out = capsys.readouterr().out
    for name in ALL:
        assert f"{name}: {datasets.get(name).title}" in out
    assert "make data-svhn" in out and "top-5" in out
    assert cli.main(["data", "list", "stl10"]) == 2
