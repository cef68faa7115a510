"""scikit-learn's digits, the embedded data set of `make demo`: read from the copy the
package ships, whatever --data-dir says, split 1,437 / 360, and fed like MNIST (x / 255)."""

import numpy as np
import pytest

from epsresnet_tf.data import datasets
from epsresnet_tf.data.pipeline import make_pipeline
from epsresnet_tf.errors import UserError


def test_digits_splits_are_the_packaged_images_scaled_to_uint8(tmp_path):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    missing = tmp_path / "no-such-folder"  # the data folder plays no part
    train = datasets.read_split("digits", "train", missing)
    test = datasets.read_split("digits", "test", missing)
    assert (
        (len(train), len(test))
        == (1437, 360)
        == (datasets.get("digits").splits["train"], datasets.get("digits").splits["test"])
    )
    assert train.images.shape == (1437, 8, 8, 1) and train.images.dtype == np.uint8
    images = np.concatenate([train.images, test.images])[..., 0]
    # 0..16 → 0..255, the darkest and brightest pixels preserved
    np.testing.assert_array_equal(images, np.rint(bunch.images * 255 / 16).astype(np.uint8))
    assert images.min() == 0 and images.max() == 255
    np.testing.assert_array_equal(np.concatenate([train.labels, test.labels]), bunch.target)
    for split in (train, test):  # every digit in both splits
        assert set(np.unique(split.labels)) == set(range(10)) and split.num_classes == 10
    assert not missing.exists()


def test_digits_unknown_split_is_a_user_error():
    with pytest.raises(UserError, match="digits has splits train and test"):
        datasets.read_split("digits", "extra", "data")


def test_digits_pipeline_normalises_and_orders_by_seed():
    pipe = make_pipeline("digits", "train", "nowhere", 64, train=True, seed=3)
    assert pipe.num_batches == 1437 // 64 and pipe.image_shape == (8, 8, 1)
    ((x, y),) = [b for _, b in zip(range(1), pipe.batches(0))]
    again = next(
        iter(make_pipeline("digits", "train", "nowhere", 64, train=True, seed=3).batches(0))
    )
    np.testing.assert_array_equal(x, again[0])  # the order depends on (seed, epoch) only
    other = next(iter(pipe.batches(1)))
    assert not np.array_equal(y, other[1])
    z = pipe.normalise_np(x)
    assert z.dtype == np.float32 and z.min() >= 0.0 and z.max() <= 1.0
    np.testing.assert_allclose(z, x / 255.0, rtol=1e-6)
    test = make_pipeline("digits", "test", "nowhere", 64, train=False)
    assert test.num_batches == 6  # 360 images, the last batch kept
