"""Tiny in-memory data sources with the training loop's source interface (`batches(pass)`,
`num_batches`, `normalise_np`, `image_shape`, `num_classes`), and the tiny config the loop
tests train, shared by the test modules."""

import numpy as np

from epsresnet_tf.config import resolve_config


class Synthetic:
    """Random 8×8×3 images and labels, drawn from (seed, pass): `batch` images a batch,
    `num_batches` a pass; NaN images from pass `nan_from` on."""

    image_shape, num_classes = (8, 8, 3), 10

    def __init__(self, batch=8, num_batches=4, nan_from=None, seed=None):
        self.batch, self.num_batches, self.nan_from, self.seed = batch, num_batches, nan_from, seed

    def batches(self, data_pass):
        rng = np.random.default_rng(
            data_pass if self.seed is None else self.seed * 1000 + data_pass
        )
        for _ in range(self.num_batches):
            x = rng.normal(size=(self.batch, 8, 8, 3)).astype(np.float32)
            if self.nan_from is not None and data_pass >= self.nan_from:
                x[:] = np.nan
            yield x, rng.integers(0, 10, self.batch).astype(np.int32)

    def normalise_np(self, x):
        return x


def tiny(**overrides):
    """cifar-basic-8, 3 epochs of batch 8, no validation, no histograms; `overrides` on top."""
    base = {
        "arch": "cifar-basic-8",
        "epochs": 3,
        "batch_size": 8,
        "val_steps": 0,
        "histogram_every": 0,
    }
    return resolve_config({**base, **overrides})
