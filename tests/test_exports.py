"""Exports anyone can load (issue 14): reduced.keras in Keras's own layers, read by a Python
that never imports epsresnet_tf; the SavedModel's serving signature with TensorFlow alone;
reduced.tflite with the same top-1. Families: CIFAR basic (pool+pad shortcuts, a removed
first unit's transition), bottleneck (projections), ShaResNet with k-gates (a shared kernel,
kept g(k) that cannot fold into it), He et al.'s sigmoid shortcut gate, ImageNet."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf import compress as C
from epsresnet_tf import exports as X
from epsresnet_tf.cli import compress as compress_cli
from epsresnet_tf.compress.write import write_outputs
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.layers import EpsilonGate
from epsresnet_tf.models import build_model
from epsresnet_tf.runfolder import read_run

SHAPE = (16, 16, 3)
BATCH = 8

#: name -> (arch, build options, blocks closed, {block: kept k}); each net's BatchNorm
#: statistics are randomised, so a statistic lost on the way would show in the logits.
FAMILIES = {
    "basic": ("cifar-basic-14", dict(gate="eps"), ["group0/block1", "group1/block0"], {}),
    "bottleneck": ("cifar-bottleneck-20", dict(gate="eps"), ["group1/block0"], {}),
    "sharesnet-k": (
        "cifar-basic-14",
        dict(gate="k", share=True),
        ["group1/block1"],
        {"group0/block1": 2.5, "group2/block1": 0.37},
    ),
    # Nothing closed: under g F + (1 - g) x a block with F = 0 still scales its shortcut,
    # so it is no identity and removing it is not exact.
    "sigmoid-shortcut": ("cifar-basic-14", dict(gate="eps", shortcut="exclusive_gating"), [], {}),
    "imagenet": ("imagenet-18", dict(gate="eps", input_shape=(32, 32, 3)), ["group1/block1"], {}),
}


def randomise_batchnorm(net, seed=0):
    rng = np.random.RandomState(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.normal(0, 0.2, n),
                    rng.normal(0, 0.2, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )


def family_net(arch, options, closed, kept_k):
    opts = {"classes": 10, "input_shape": SHAPE, **options}
    net = build_model(arch, **opts)
    randomise_batchnorm(net)
    for bid, gate in gate_by_block(net).items():
        if isinstance(gate, EpsilonGate):
            gate.epsilon.assign(1e6 if bid in closed else 0.0)  # closed / open everywhere
        else:
            gate.k.assign(-0.25 if bid in closed else kept_k.get(bid, 1.0))
    return net, opts


def images(shape, n=2 * BATCH, seed=1):
    x = np.random.RandomState(seed).randn(n, *shape).astype("float32")
    return [x[i : i + BATCH] for i in range(0, n, BATCH)]


#: Run by a fresh interpreter that cannot import epsresnet_tf: loads each folder's exports
#: and writes their logits on x.npy beside them.
PLAIN_LOADER = r"""
import importlib.abc, json, sys

class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "epsresnet_tf":
            raise ImportError("loading the exports needed epsresnet_tf")

sys.meta_path.insert(0, NoPackage())
import keras, numpy as np, tensorflow as tf

from pathlib import Path

for folder in map(Path, json.loads(sys.argv[1])):
    net = keras.models.load_model(folder / "reduced.keras")
    served = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    (name,) = served.structured_input_signature[1]
    lite = tf.lite.Interpreter(model_path=str(folder / "reduced.tflite"))
    inp, res = lite.get_input_details()[0], lite.get_output_details()[0]
    out = {}
    for key, x in np.load(folder / "inputs.npz").items():
        out["keras/" + key] = np.asarray(net(x, training=False))
        (out["saved/" + key],) = [y.numpy() for y in served(**{name: tf.constant(x)}).values()]
        lite.resize_tensor_input(inp["index"], x.shape)
        lite.allocate_tensors()
        lite.set_tensor(inp["index"], x)
        lite.invoke()
        out["tflite/" + key] = lite.get_tensor(res["index"])
    np.savez(folder / "outputs.npz", **out)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("epsresnet"))))
"""


def load_without_package(folders, cwd):
    """Run PLAIN_LOADER on `folders` in `python -I` (no PYTHONPATH, no user site, no
    script folder on the path): each folder's exports run on its inputs.npz, their logits
    in its outputs.npz ("keras/<input>", "saved/<input>", "tflite/<input>"); the
    epsresnet modules the loading process imported (must be none)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_LOADER, json.dumps([str(f) for f in folders])],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each family compressed with every export, then loaded by a plain Python:
    {family: (certificate doc, folder, the trained net's logits on its input "x")}."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, (arch, options, closed, kept_k) in FAMILIES.items():
        net, opts = family_net(arch, options, closed, kept_k)
        data = images(opts["input_shape"])
        folder = root / name
        doc = C.compress_model(
            net,
            arch,
            opts,
            C.CompressData({"test": data}, data, batch_size=BATCH),
            folder,
            C.CompressOptions(tflite=True),
        )
        np.savez(folder / "inputs.npz", x=data[0])
        out[name] = doc, folder, np.asarray(C.logits_of(net(data[0], training=False)))
    imported = load_without_package([f for _, f, _ in out.values()], root)
    assert imported == []  # not one epsresnet_tf module in the loading process
    return out


@pytest.mark.slow  # five families compressed, each exported three ways: 1-4 min on 2 cores
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exports_load_without_the_package_and_predict_as_the_trained_net(exported, family):
    doc, folder, expected = exported[family]
    assert doc["removed"] == sorted(FAMILIES[family][2]) and doc["equivalence"]["passed"]
    assert doc["reduced_gates"] == ("k" if family == "sharesnet-k" else "none")
    assert doc["exports"]["keras_standalone"] and doc["exports"]["custom_layers"] == []
    outputs = np.load(folder / "outputs.npz")
    for export in ("keras", "saved"):
        got = outputs[f"{export}/x"]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=export)
    lite = outputs["tflite/x"]
    np.testing.assert_array_equal(lite.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(lite, expected, atol=1e-4, rtol=0)
    tfl = doc["exports"]["tflite"]
    assert tfl["passed"] and tfl["same_top1"] == tfl["images"] == 2 * BATCH
    assert (
        tfl["max_abs_logit_diff"] < 1e-4
        and (folder / "reduced.tflite").stat().st_size == (tfl["bytes"])
    )
    saved = json.loads((folder / "certificate.json").read_text())
    assert saved["exports"] == doc["exports"]


def test_demo_case_loads_without_the_package(tmp_path):
    """The user's case, in the fast suite: `make demo` keeps its ε-gates (one was not open
    on every batch). The CIFAR basic net with kept ε-gates, read by a Python that cannot
    import epsresnet_tf, gives the trained net's logits, and its gates still decide from
    the batch: an image whose own max |F| is below ε, fed alone, closes a gate the
    batch opened."""
    from epsresnet_tf.gates import eps as E

    arch, options, closed, kept_k = FAMILIES["basic"]
    net, opts = family_net(arch, options, closed, kept_k)
    data = images(SHAPE)
    gate = gate_by_block(net)["group2/block0"]
    response = E.gate_responses(net, [data[1]])[0]["group2/block0"]
    low = np.sort(response)[:2]
    gate.epsilon.assign(float(low.mean()))  # the weakest image alone: T = 0; batches: T = 1
    lone = data[1][np.argmin(response)][None]
    folder = tmp_path / "reduced"
    doc = C.compress_model(
        net,
        arch,
        opts,
        C.CompressData({"test": data}, data, batch_size=BATCH),
        folder,
        C.CompressOptions(gates="keep", tflite=True),
    )
    assert doc["blocks"]["group2/block0"]["verdict"] == "open" and doc["reduced_gates"] == "eps"
    assert doc["exports"]["keras_standalone"] and doc["exports"]["tflite"]["passed"]
    np.savez(folder / "inputs.npz", x=data[1], lone=lone)
    assert load_without_package([folder], tmp_path) == []
    outputs = np.load(folder / "outputs.npz")
    for key, x in (("x", data[1]), ("lone", lone)):
        expected = np.asarray(net(x, training=False))
        for export in ("keras", "saved"):
            got = outputs[f"{export}/{key}"]
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=export + key)
        np.testing.assert_array_equal(outputs[f"tflite/{key}"].argmax(-1), expected.argmax(-1))
    gate.epsilon.assign(0.0)  # the gate open: the lone image's logits differ
    assert np.abs(np.asarray(net(lone, training=False)) - outputs["keras/lone"]).max() > 1e-3
    names = {
        l.name: type(l).__name__ for l in keras.models.load_model(folder / "reduced.keras").layers
    }
    assert names["group1_transition_shortcut_pool_pad"] == "Reshape"  # option A, standard
    assert "FusedBatchNormalization" not in names.values()


# --- the standard net, layer by layer ------------------------------------------------------


@pytest.mark.parametrize(
    "arch, options",
    [
        ("cifar-basic-14", dict(gate="k", share=True, data_format="channels_first")),
        ("cifar-basic-14", dict(shortcut="shortcut_only_gating")),
        ("mnist-plain-3", dict(gate="k", input_shape=(28, 28, 1))),
        ("wrn-16-1", dict(gate="k")),
    ],
)
def test_standard_net_is_bit_identical_and_keras_only(arch, options):
    """Every replacement computes what the package's layer computed, bit for bit: BN with
    the trained statistics, option A's pad, kept g(k) (residual and plain), sigmoid gates."""
    opts = {"classes": 10, "input_shape": SHAPE, **options}
    net = build_model(arch, **opts)
    randomise_batchnorm(net, seed=3)
    for i, gate in enumerate(gate_by_block(net).values()):
        gate.k.assign(0.3 + 0.7 * i)
    standard, custom = X.standard_net(net)
    assert custom == [] and X.custom_layers(standard) == []
    assert X.custom_layers(net)  # the package's net had some
    x = np.random.RandomState(4).randn(4, *opts["input_shape"]).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(standard(x, training=False)), np.asarray(net(x, training=False))
    )
    if options.get("share"):  # the shared kernel stays one Conv2D, called by each unit
        conv = standard.get_layer("group0_shared_conv3x3")
        assert isinstance(conv, keras.layers.Conv2D) and len(conv._inbound_nodes) == 2


@pytest.mark.parametrize("scope, group", [("batch", None), ("sample", None), ("batch", 4)])
def test_kept_eps_gates_become_keras_ops_bit_for_bit(scope, group):
    """A kept ε-gate in Keras ops: the same T as the layer on a batch, on one image and on
    batches that end in a partial group, each gate's ε at its median response so some
    gates open and some close."""
    from epsresnet_tf.gates import eps as E

    net = build_model(
        "cifar-basic-14",
        classes=10,
        input_shape=SHAPE,
        gate="eps",
        gate_scope=scope,
        gate_group=group,
    )
    randomise_batchnorm(net, seed=7)
    x = images(SHAPE)[0]
    responses = E.gate_responses(net, [x])[0]
    for bid, gate in gate_by_block(net).items():
        gate.epsilon.assign(float(np.median(responses[bid])))
    standard, custom = X.standard_net(net)
    assert custom == []
    for batch in (x, x[:1], x[5:], x[:6]):
        np.testing.assert_array_equal(
            np.asarray(standard(batch, training=False)), np.asarray(net(batch, training=False))
        )


@keras.saving.register_keras_serializable(package="test_exports")
class Halve(keras.layers.Layer):
    """A layer from outside the package (as a gate kind registered by a user would be)."""

    def call(self, x):
        return x * 0.5


def test_a_layer_from_outside_is_kept_and_reported(tmp_path):
    """A layer the export does not know stays: certificate.json says that the .keras needs
    the code that registered it."""
    inputs = keras.Input(SHAPE)
    net = keras.Model(inputs, keras.layers.Dense(3)(Halve(name="halve")(inputs)))
    standard, custom = X.standard_net(net)
    assert custom == ["Halve"] and isinstance(standard.get_layer("halve"), Halve)
    doc = {}
    write_outputs(tmp_path, standard, doc)
    assert doc["exports"]["keras_standalone"] is False
    assert doc["exports"]["custom_layers"] == ["Halve"]
    assert doc["exports"]["tflite"] is None
    assert json.loads((tmp_path / "certificate.json").read_text())["exports"] == doc["exports"]


# --- TFLite: refusals in one line -------------------------------------------------------


def test_tflite_disagreement_and_conversion_failure_are_one_line(capsys, monkeypatch, tmp_path):
    alone = {"images": 16, "same_top1": 16, "max_abs_logit_diff": 1e-6, "passed": True}
    tfl = {
        "file": "reduced.tflite",
        "images": 16,
        "same_top1": 15,
        "max_abs_logit_diff": 0.02,
        "passed": False,
        "batch_1": alone,
    }
    doc = {"exports": {"tflite": tfl}}
    assert compress_cli._report_exports(doc) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "15 of 16" in err[0] and "disagrees" in err[0]
    tfl.update(same_top1=16, passed=True)
    assert compress_cli._report_exports(doc) == 0 and "16 of 16" in capsys.readouterr().out
    # one image at a time is a client's batch too: a disagreement there alone fails the step
    alone.update(same_top1=14, passed=False)
    tfl.update(passed=False)
    assert compress_cli._report_exports(doc) == 1
    assert "14 of 16 one at a time" in capsys.readouterr().err
    assert compress_cli._report_exports({"exports": {"tflite": None}}) == 0

    import tensorflow as tf

    def refuses(*a, **k):
        raise RuntimeError("op Foo is neither a custom op nor a flex op\nmore detail")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", refuses)
    with pytest.raises(UserError, match=r"^TFLite conversion failed \(op Foo .*flex op\); "):
        X.write_tflite(keras.Sequential([keras.Input((2,))]), tmp_path / "x.tflite", tmp_path)
    assert not (tmp_path / "x.tflite").exists()


def test_compress_cli_tflite_on_a_run_folder(tmp_path, capsys):
    """`epsresnet compress RUN --tflite` on a digits run folder: reduced.tflite beside the
    other exports, its check printed and in certificate.json."""
    root = tmp_path / "run"
    root.mkdir()
    config = {"arch": "cifar-basic-8", "dataset": "digits", "gate": "eps", "epsilon": 2.5}
    (root / "config.json").write_text(json.dumps({**config, "batch_size": 32}))
    run = read_run(root)
    net = build_model(run.arch, **run.build_options)
    randomise_batchnorm(net, seed=5)
    for bid, gate in gate_by_block(net).items():
        gate.epsilon.assign(1e6 if bid == "group1/block0" else 0.0)
    net.save(root / "model.keras")
    argv = ["compress", str(root), "--data-dir", "unused", "--max-batches", "2", "--tflite"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "reduced.tflite: same top-1 on 64 of 64 test images" in printed
    cert = json.loads((root / "reduced" / "certificate.json").read_text())
    assert cert["removed"] == ["group1/block0"] and cert["exports"]["tflite"]["passed"]
    assert (root / "reduced" / "reduced.tflite").is_file()


def test_mixed_precision_net_converts_to_tflite_from_a_float32_copy(tmp_path):
    """TFLite has no float16 kernels: a mixed-precision net goes through a float32 copy
    (same weights), whose flatbuffer then agrees with the net to float16 rounding."""
    policy = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        net = build_model("cifar-basic-8", classes=10, input_shape=SHAPE, gate="k")
    finally:
        keras.config.set_dtype_policy(policy)
    randomise_batchnorm(net, seed=6)
    standard, _ = X.standard_net(net)
    assert standard.get_layer("stem_conv").compute_dtype == "float16"
    copy, _ = X.standard_net(net, dtype="float32")
    assert {l.compute_dtype for l in copy.layers if l.weights} == {"float32"}
    size = X.write_tflite(standard, tmp_path / "m.tflite")
    assert size == (tmp_path / "m.tflite").stat().st_size > 0
    x = images(SHAPE)[0]
    lite = X.tflite_logits(X._interpreter(tmp_path / "m.tflite"), x)
    np.testing.assert_allclose(lite, np.asarray(copy(x, training=False)), atol=1e-4, rtol=0)
    np.testing.assert_allclose(lite, np.asarray(net(x, training=False)), atol=2e-2, rtol=0)


_TFLITE_LOG = """
import sys, tempfile
import keras, numpy as np
from epsresnet_tf import exports as X
folder = tempfile.mkdtemp()
X.write_tflite(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), folder + "/m.tflite")
sys.stderr.write("INTERPRETER\\n"); sys.stderr.flush()
if sys.argv[1] == "ours":
    interpreter = X._interpreter(folder + "/m.tflite")
else:
    import tensorflow as tf
    interpreter = tf.lite.Interpreter(model_path=folder + "/m.tflite")
    interpreter.allocate_tensors()
print(X.tflite_logits(interpreter, np.ones((3, 4), np.float32)).shape)
"""


@pytest.mark.slow  # two Pythons importing TensorFlow: ~15 s on 2 cores
def test_the_tflite_interpreter_prints_no_info_line_unless_tensorflow_shows_them():
    """TFLite's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate" straight
    to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says (the raw interpreter, the
    control); ours holds it back where that level hides INFO, as `compress --tflite` runs."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    err = {}
    for which in ("ours", "raw"):
        proc = subprocess.run(
            [sys.executable, "-c", _TFLITE_LOG, which], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0 and "(3, 2)" in proc.stdout, proc.stderr[-1000:]
        err[which] = proc.stderr.split("INTERPRETER\n", 1)[1]
    assert "XNNPACK" in err["raw"]
    assert "INFO" not in err["ours"], err["ours"]
