"""The check the deployment tests share (issue 26): a run folder's exported net
(reduced/reduced.keras, read with Keras alone) gives every test image the same top-1 alone,
in batches of 8 and with the whole split in one batch, and certificate.json's errors alone
are that net's and the gated net's."""

import json

import keras
import numpy as np

from epsresnet_tf.compress import run_datasets
from epsresnet_tf.runfolder import read_run


def test_split(run_dir, data_dir):
    """(images, labels) of the run's whole test split, as compress checks on it."""
    batches = list(run_datasets(read_run(run_dir), data_dir, ("test",))["test"])
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def top1_at(net, x, batch):
    return np.concatenate(
        [
            np.asarray(net(x[i : i + batch], training=False)).argmax(-1)
            for i in range(0, len(x), batch)
        ]
    )


def assert_deployed_batch_independent(run_dir, data_dir):
    """The certificate's deployment, checked against the exported net itself; returns it."""
    x, y = test_split(run_dir, data_dir)
    net = keras.models.load_model(run_dir / "reduced" / "reduced.keras")
    one, eight, whole = (top1_at(net, x, b) for b in (1, 8, len(x)))
    np.testing.assert_array_equal(one, eight)
    np.testing.assert_array_equal(one, whole)
    cert = json.loads((run_dir / "reduced" / "certificate.json").read_text())
    dep = cert["deployment"]
    assert dep["batch_independent"] and dep["images"]["batch_1"] == len(x)
    assert dep["test_error"]["batch_1"] == np.mean(one != y)
    assert cert["equivalence"]["passed"] and cert["equivalence"]["batch_1"]["passed"]
    return cert
