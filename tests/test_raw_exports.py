"""Raw images in (issue 26): every export of a run folder also takes images as the dataset
stores them — digits 0–16 as scikit-learn has them, CIFAR 32×32×3 0–255 as the official
pickle holds them — with the training normalisation inside (the CIFAR mean image as a
constant): reduced-raw.keras, the SavedModel's serving_default (TF Serving's) and
reduced-raw.tflite give the training pipeline's top-1 on every test image."""

import contextlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsresnet_tf import cli
from epsresnet_tf import exports as X
from epsresnet_tf.compress import run_datasets
from epsresnet_tf.data import datasets, readers
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.models import build_model
from epsresnet_tf.runfolder import read_run


def _run_folder(root, config, data_dir=None):
    """A run folder with a random net (BN statistics moved off their start, so every layer
    matters), one block closed; model.keras as training would leave it."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({**config, "batch_size": 32}))
    if data_dir is not None:
        (root / "data.json").write_text(json.dumps({"data_dir": str(data_dir)}))
    run = read_run(root)
    keras.utils.set_random_seed(11)
    net = build_model(run.arch, **run.build_options)
    rng = np.random.default_rng(3)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    for bid, gate in gate_by_block(net).items():
        gate.epsilon.assign(1e6 if bid == "group1/block0" else 0.0)
    net.save(root / "model.keras")
    return run


def _pipeline_top1(run, data_dir):
    """The training pipeline's top-1: reduced.keras on the normalised test batches."""
    net = keras.models.load_model(run.root / "reduced" / "reduced.keras")
    test = run_datasets(run, data_dir, ("test",))["test"]
    return np.concatenate([np.asarray(net(x, training=False)).argmax(-1) for x, _ in test])


def _raw_top1(folder, images, onnx=False):
    """Top-1 of each raw-image export on uint8 `images`, in batches of 50 and, for TFLite
    (and ONNX), one at a time as well."""
    raw = keras.models.load_model(folder / "reduced-raw.keras")
    served = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    lite = X._interpreter(folder / "reduced-raw.tflite")
    runs = {
        "keras": lambda x: np.asarray(raw(x, training=False)),
        "saved_model": lambda x: np.asarray(next(iter(served(tf.constant(x)).values()))),
        "tflite": lambda x: X.tflite_logits(lite, x),
    }
    if onnx:
        session = X.onnx_session(folder / "reduced-raw.onnx")
        name = session.get_inputs()[0].name
        runs["onnx"] = lambda x: session.run(None, {name: x})[0]
    out = {
        k: [f(images[i : i + 50]).argmax(-1) for i in range(0, len(images), 50)]
        for k, f in runs.items()
    }
    for k in ("tflite", "onnx") if onnx else ("tflite",):
        out[k + "_alone"] = [runs[k](x[None]).argmax(-1) for x in images]
    return {k: np.concatenate(v) for k, v in out.items()}


def _digits_as_scikit_learn_has_them():
    """The test split's 360 images as a user has them: scikit-learn's 0..16, as uint8."""
    from sklearn.datasets import load_digits

    images = load_digits().images[readers.DIGITS_TRAIN :, :, :, None].astype(np.uint8)
    assert images.max() == 16
    return images


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits run folder compressed with every export (--tflite --onnx): (run, printed)."""
    root = tmp_path_factory.mktemp("digits") / "run"
    config = {"arch": "cifar-basic-8", "dataset": "digits", "gate": "eps", "epsilon": 2.5}
    run = _run_folder(root, config)
    argv = ["compress", str(root), "--tflite", "--onnx", "--client-images", "40"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(argv) == 0
    return run, out.getvalue()


def test_digits_exports_take_the_0_to_16_pixels_scikit_learn_has(digits_run):
    run, out = digits_run
    root = run.root
    assert "take uint8 8×8×1 images 0–16, as digits stores them" in out
    assert "reduced-raw.onnx: same top-1 on 360 of 360" in out
    expected = _pipeline_top1(run, None)
    for export, top1 in _raw_top1(
        root / "reduced", _digits_as_scikit_learn_has_them(), True
    ).items():
        np.testing.assert_array_equal(top1, expected, err_msg=export)
    cert = json.loads((root / "reduced" / "certificate.json").read_text())
    raw = cert["exports"]["raw"]
    assert raw["passed"] and raw["images"] == 360 == raw["same_top1"]
    assert raw["max_abs_logit_diff"] == 0.0  # the pipeline's own arithmetic
    for entry in (raw["tflite"], raw["onnx"], cert["exports"]["onnx"]):
        assert entry["passed"] and entry["images"] == 360 and entry["batch_1"]["images"] == 40
    # the normalised entries are still there for those who feed the pipeline's floats
    x = next(iter(run_datasets(run, None, ("test",))["test"]))[0]
    session = X.onnx_session(root / "reduced" / "reduced.onnx")
    onnx_top1 = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(-1)
    np.testing.assert_array_equal(onnx_top1, expected[: len(x)])
    served = tf.saved_model.load(str(root / "reduced" / "saved_model"))
    x = next(iter(run_datasets(run, None, ("test",))["test"]))[0]
    np.testing.assert_array_equal(np.asarray(served.serve(x)).argmax(-1), expected[: len(x)])


@pytest.mark.slow  # compress of 1,017 CIFAR images with TFLite: ~20 s on 2 cores
def test_cifar_exports_take_the_official_pickles_bytes_with_the_mean_image_inside(
    tmp_path, shared_data
):
    data = shared_data / "cifar10-subset"
    root = tmp_path / "run"
    config = {"arch": "cifar-basic-8", "dataset": "cifar10", "gate": "eps", "epsilon": 2.5}
    run = _run_folder(root, config, data)
    argv = ["compress", str(root), "--tflite", "--client-images", "40", "--splits", "test"]
    assert cli.main(argv) == 0
    # as a user has them: the official pickle's rows, channel-major, read with pickle alone
    with open(data / "cifar-10-batches-py" / "test_batch", "rb") as f:
        rows = pickle.load(f, encoding="bytes")[b"data"]
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    expected = _pipeline_top1(run, data)
    assert len(expected) == len(images) == 1017
    for export, top1 in _raw_top1(root / "reduced", images).items():
        np.testing.assert_array_equal(top1, expected, err_msg=export)
    # the mean image training normalised with is in the file, as a constant
    raw = keras.models.load_model(root / "reduced" / "reduced-raw.keras")
    (norm,) = [l for l in raw.layers if isinstance(l, keras.layers.Normalization)]
    mean = run_datasets(run, data, ("test",))["test"].pipe.mean
    assert mean.shape == (32, 32, 3) and mean.std() > 1
    np.testing.assert_array_equal(np.asarray(norm.mean).reshape(32, 32, 3), mean)


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10", "svhn", "imagenet"])
def test_the_raw_entry_is_the_pipelines_normalisation(name):
    """Keras layers against `Dataset.normalise` on random stored images of each dataset
    (ImageNet: both channel orders): bit for bit, ImageNet's std within an ulp."""
    ds = datasets.get(name)
    shape = (8, 8, 3) if name == "imagenet" else ds.image_shape
    rng = np.random.default_rng(5)
    stored = rng.integers(0, ds.stored_levels + 1, (6, *shape)).astype(np.uint8)
    as_read = np.rint(stored * (255.0 / ds.stored_levels)).astype(np.uint8)
    np.testing.assert_array_equal(ds.to_stored(as_read), stored)
    mean = rng.uniform(0, 255, shape).astype(np.float32) if ds.has_mean_image else None
    identity = keras.Sequential([keras.Input(shape), keras.layers.Identity()])
    for order in ("rgb", "authors-bgr") if name == "imagenet" else ("rgb",):
        got = np.asarray(X.raw_image_net(identity, ds, mean, order)(stored))
        want = ds.normalise(as_read, mean, order)
        if name == "imagenet":
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


def _clients():
    """docs/exports.md's client snippets: {name: code}."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "exports.md").read_text()
    blocks = re.findall(r"```python\n(# client: (\S+).*?)```", text, re.S)
    return {name: code for code, name in blocks}


@pytest.mark.slow  # four Pythons importing TensorFlow: ~40 s on 2 cores (make test's budget)
def test_the_client_snippets_of_docs_exports_run_and_answer_as_the_pipeline(digits_run, tmp_path):
    """Each snippet as a user runs it, in its own Python, beside a runs/demo/reduced with
    every export; the REST body goes through the SavedModel's serving_default as TF Serving
    would feed it (no server here)."""
    run, _ = digits_run
    clients = _clients()
    assert set(clients) == {"keras", "tf-serving", "tflite", "onnxruntime"}
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "reduced").symlink_to(run.root / "reduced")
    expected = _pipeline_top1(run, None)[:10].tolist()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    for name, code in clients.items():
        lines = [l for l in code.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        assert len(lines) <= 12, name  # a short client
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, (name, done.stderr[-1500:])
        last = json.loads(done.stdout.strip().splitlines()[-1])
        if name == "tf-serving":
            assert last["signature_name"] == "serving_default"
            served = tf.saved_model.load(str(run.root / "reduced" / "saved_model"))
            batch = tf.constant(np.asarray(last["instances"], np.uint8))
            (logits,) = served.signatures["serving_default"](batch).values()
            last = np.asarray(logits).argmax(-1).tolist()
        assert last == expected, name


def test_onnx_without_tf2onnx_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"needs tf2onnx and onnxruntime: pip install") as err:
        X.write_onnx(tmp_path / "saved_model", "serve", tmp_path / "m.onnx")
    assert "\n" not in str(err.value) and not (tmp_path / "m.onnx").exists()
