"""`train --init-from-keras FILE` (config key `weights`): a run starts from a Keras file's
weights, matched by layer name into the gated net (epsresnet_tf.pretrained; issue 24)."""

import json

import h5py
import keras
import numpy as np
import pytest
from _sources import Synthetic, tiny

from epsresnet_tf import cli
from epsresnet_tf.errors import UserError
from epsresnet_tf.pretrained import keras_file_weights
from epsresnet_tf.train.model import build_net, build_plain_net
from epsresnet_tf.transform import gate_model


def small_residual_net(classes=10, seed=0):
    """A user's functional residual net: a stem, two identity units, a classifier."""
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    for i in range(2):
        y = keras.layers.BatchNormalization(name=f"u{i}_bn")(x)
        y = keras.layers.ReLU(name=f"u{i}_relu")(y)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"u{i}_conv")(y)
        x = keras.layers.Add(name=f"u{i}_add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(classes, name="fc")(x))


def save_legacy_h5(model, path):
    """keras.applications' weight files are Keras 2's HDF5 layout; Keras 3 reads it (and
    writes it only through its legacy module)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def assign(net, arrays):
    for v, a in zip(net.variables, arrays):
        v.assign(a)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_each_keras_format_starts_the_gated_net_with_the_files_weights(tmp_path, suffix):
    source = small_residual_net(seed=1)
    path = tmp_path / f"pretrained{suffix}"
    save_as(source, path)
    gated = gate_model(small_residual_net(seed=2), "eps", epsilon=0.0, adds=["u0_add", "u1_add"])
    arrays, note = keras_file_weights(path, gated, lambda: small_residual_net(seed=3))
    assign(gated, arrays)
    assert note.startswith("6 layers from")  # stem, 2 × (bn, conv), fc
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    # ε = 0 gates pass everything: the gated net is the file's net
    np.testing.assert_allclose(gated.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5)


def save_as(model, path):
    """`model` in the Keras format `path`'s suffix names."""
    if path.name.endswith(".keras"):
        model.save(path)
    elif path.name.endswith(".weights.h5"):
        model.save_weights(path)
    else:
        save_legacy_h5(model, path)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_a_classifier_of_another_shape_starts_fresh_and_is_named(tmp_path, suffix):
    path = tmp_path / f"imagenet-like{suffix}"
    source = small_residual_net(classes=1000, seed=1)
    save_as(source, path)
    gated = gate_model(small_residual_net(seed=2), "eps", epsilon=0.0, adds=["u0_add", "u1_add"])
    before = gated.get_layer("fc").get_weights()[0].copy()
    arrays, note = keras_file_weights(path, gated, small_residual_net)
    assign(gated, arrays)
    assert note.endswith("not in it with this shape: fc)") and note.startswith("5 layers")
    np.testing.assert_array_equal(gated.get_layer("fc").get_weights()[0], before)
    for name in ("stem", "u1_bn", "u1_conv"):
        for mine, theirs in zip(gated.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_files_that_are_not_usable_keras_weights_are_one_line_errors(tmp_path):
    net = small_residual_net()
    with pytest.raises(UserError, match="not a Keras file; give a .keras"):
        keras_file_weights(tmp_path / "w.pt", net, small_residual_net)
    with pytest.raises(UserError, match="no such file"):
        keras_file_weights(tmp_path / "absent.keras", net, small_residual_net)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="other")])
    other.save(tmp_path / "other.keras")
    with pytest.raises(UserError, match="no layer of it has a name and shape"):
        keras_file_weights(tmp_path / "other.keras", net, small_residual_net)
    # a Lambda layer's bytecode would run on load: safe_mode refuses the file
    inp = keras.Input((8, 8, 3))
    code = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2, name="code")(inp))
    code.save(tmp_path / "code.keras")
    with pytest.raises(UserError, match="Keras cannot read it"):
        keras_file_weights(tmp_path / "code.keras", net, small_residual_net)
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="Keras cannot read it"):
        keras_file_weights(tmp_path / "junk.weights.h5", net, small_residual_net)


def test_the_flag_records_an_absolute_path_names_the_run_and_excludes_init_from(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    for how in (["--init-from-keras", "w/r50.h5"], ["--set", "weights=w/r50.h5"]):
        assert cli.main(["train", "demo", *how, "--print-config"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["weights"] == str(tmp_path / "w" / "r50.h5")
        assert printed["name"] == "demo_from-r50.h5"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="init_from and weights both given"):
        tiny(init_from=str(tmp_path), weights="r50.keras")
    with pytest.raises(UserError, match="not a Keras file"):
        tiny(weights="r50.ckpt")


@pytest.mark.slow  # trains twice (~10 s): keeps `make test` under 15 minutes; CI runs it
def test_a_training_run_starts_from_the_file_and_its_resume_from_its_own_checkpoint(tmp_path):
    from epsresnet_tf.train.loop import run_training

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.net = {
                layer.name: [w.numpy() for w in layer.weights] for layer in self.model.net.layers
            }

    cfg = tiny(epochs=1)
    plain = build_plain_net(cfg, 10, Synthetic.image_shape)
    assert not any("gate" in layer.name for layer in plain.layers)
    gated_names = {layer.name for layer in build_net(cfg, 10, Synthetic.image_shape).layers}
    assert {layer.name for layer in plain.layers} < gated_names  # the gates are extra layers
    for v in plain.trainable_variables:  # weights no fresh net has
        v.assign(np.full(v.shape, 0.0123, np.float32))
    path = tmp_path / "plain.weights.h5"
    plain.save_weights(path)
    seen = FirstWeights()
    run = tmp_path / "run"
    run_training(
        dict(cfg, weights=str(path)),
        run,
        sources=(Synthetic(num_batches=2), None),
        verbose=0,
        extra_callbacks=[seen],
    )
    weighted = [layer for layer in plain.layers if layer.weights]
    assert len(weighted) > 4
    for layer in weighted:
        for mine, theirs in zip(seen.net[layer.name], layer.weights):
            np.testing.assert_array_equal(mine, theirs.numpy())
    assert json.loads((run / "config.json").read_text())["weights"] == str(path)
    path.unlink()  # a resume reads its own checkpoint, never the file again
    again = FirstWeights()
    result = run_training(
        dict(cfg, weights=str(path), epochs=2),
        run,
        sources=(Synthetic(num_batches=2), None),
        verbose=0,
        extra_callbacks=[again],
    )
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    conv = next(layer.name for layer in weighted if "conv" in layer.name)
    assert not np.allclose(again.net[conv][0], 0.0123)  # trained one epoch since
