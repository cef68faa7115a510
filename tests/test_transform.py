"""Gating any Keras residual net by a graph transform, and compressing it by removing units
from the same graph (issue 24; docs/keras-models.md)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsresnet_tf.compress import compress_model
from epsresnet_tf.compress.run import CompressData
from epsresnet_tf.data.readers import read_digits
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.gates.eps import gate_responses
from epsresnet_tf.models import build_model
from epsresnet_tf.transform import gate_model
from epsresnet_tf.units import inputs_of, locate_units, producer


def keras_unit_adds(model):
    """Keras's own structure: its ResNetV2 stacks name each unit's Add conv{s}_block{b}_out."""
    return [
        l.name
        for l in model.layers
        if isinstance(l, keras.layers.Add) and l.name.endswith("_out") and "_block" in l.name
    ]


def resnet_v2(name, size=32):
    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, name)
    return build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)


def images(n=6, size=32, seed=0):
    return np.random.RandomState(seed).rand(n, size, size, 3).astype("float32")


@pytest.mark.parametrize(
    "name,units",
    [
        ("ResNet50V2", 16),
        pytest.param("ResNet101V2", 33, marks=pytest.mark.slow),
        pytest.param("ResNet152V2", 50, marks=pytest.mark.slow),
    ],
)
def test_the_transform_finds_every_resnet_v2_unit_and_changes_nothing_at_epsilon_0(name, units):
    net = resnet_v2(name)
    found = locate_units(net)
    adds = keras_unit_adds(net)
    assert len(found) == len(adds) == units
    assert [u.add for u in found] == adds
    # stage s, block b -> group s-2, block b-1; Keras's Add([shortcut, x]): the branch is 1
    first, last = found[0], found[-1]
    assert (first.name, first.block) == ("conv2_block1", "group0/block0")
    assert last.block == f"group3/block{int(last.name.split('block')[1]) - 1}"
    assert {u.branch for u in found} == {1}
    gated = gate_model(net, "eps", epsilon=0.0)
    assert list(gate_by_block(gated)) == [u.block for u in found]
    x = images()
    np.testing.assert_array_equal(net(x, training=False), gated(x, training=False))


@pytest.mark.slow  # ResNet50V2 compressed, then loaded in a second Python (~35 s): for CI
def test_a_unit_forced_below_epsilon_is_removed_and_the_reduced_net_loads_with_keras_alone(
    tmp_path,
):
    gated = gate_model(resnet_v2("ResNet50V2"), "eps", epsilon=1e-3)
    for conv in ("conv3_block2_3_conv", "conv4_block6_3_conv"):  # an identity unit, a max-pool one
        layer = gated.get_layer(conv)
        layer.set_weights([w * 0 for w in layer.get_weights()])
    x = images(16)
    data = CompressData({"train": [x[:8], x[8:]]}, [(x, np.zeros(16, np.int32))], batch_size=8)
    doc = compress_model(gated, None, {}, data, tmp_path / "reduced")
    removed = doc["rules"]["certificate"]["removed"]
    assert {"group1/block1", "group2/block5"} <= set(removed)
    assert doc["equivalence"]["max_abs_logit_diff"] <= 1e-5
    assert doc["after"]["params"] < doc["before"]["params"]
    assert (doc["before"]["blocks"], doc["after"]["blocks"]) == (16, 16 - len(removed))
    assert doc["blocks"]["group2/block5"]["reason"].endswith("which the graph keeps")
    written = json.loads((tmp_path / "reduced" / "certificate.json").read_text())["units"]
    assert written == {u.block: u.add for u in locate_units(resnet_v2("ResNet50V2"))}
    assert written["group1/block1"] == "conv3_block2_out"
    np.save(tmp_path / "x.npy", x)
    expected = keras.models.load_model(tmp_path / "reduced" / "reduced.keras")(x).numpy()
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(tmp_path / 'reduced' / 'reduced.keras')!r})\n"
        f"y = m(np.load({str(tmp_path / 'x.npy')!r})).numpy()\n"
        "assert not [k for k in sys.modules if k.startswith('epsresnet_tf')]\n"
        "print(json_out := __import__('json').dumps(y.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    np.testing.assert_allclose(
        np.array(json.loads(out.stdout.splitlines()[-1])), expected, atol=1e-5
    )


def digits_user_net():
    """A user's own functional residual net, written here: 4 pre-activation units."""
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inp)
    for i in range(4):
        y = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"u{i}_bn1")(x))
        y = keras.layers.Conv2D(16, 3, padding="same", name=f"u{i}_c1")(y)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"u{i}_bn2")(y))
        y = keras.layers.Conv2D(16, 3, padding="same", name=f"u{i}_c2")(y)
        x = keras.layers.Add(name=f"u{i}_add")([x, y])
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="head_bn")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(x), name="user_resnet")


@pytest.mark.slow  # two epochs of training: keeps `make test` under 15 minutes; CI runs it
def test_a_users_own_residual_net_gated_trained_two_epochs_and_compressed_is_identical(tmp_path):
    keras.utils.set_random_seed(0)
    net = digits_user_net()
    assert [u.add for u in locate_units(net)] == [f"u{i}_add" for i in range(4)]
    gated = gate_model(net, "eps", epsilon=0.0)
    train, test = read_digits("train"), read_digits("test")
    x_train, x_test = train.images / np.float32(255), test.images / np.float32(255)
    gated.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    fit = gated.fit(x_train, train.labels, batch_size=64, epochs=2, verbose=0)
    assert fit.history["accuracy"][-1] > 0.5
    # ε between the two quietest units' largest responses: the quietest closes (and with it
    # any unit that then goes quiet too), the loudest stays open
    train_batches = tf.data.Dataset.from_tensor_slices(x_train.astype("float32")).batch(64)
    ranked = sorted(float(r.max()) for r in gate_responses(gated, train_batches)[0].values())
    epsilon = (ranked[0] + ranked[1]) / 2
    for layer in gate_by_block(gated).values():
        layer.epsilon.assign(epsilon)
    maxima = {b: float(r.max()) for b, r in gate_responses(gated, train_batches)[0].items()}
    check = tf.data.Dataset.from_tensor_slices((x_test.astype("float32"), test.labels)).batch(90)
    doc = compress_model(
        gated, None, {}, CompressData({"train": train_batches}, check, 64), tmp_path / "out"
    )
    closed = sorted(b for b, m in maxima.items() if m < epsilon)
    assert doc["rules"]["certificate"]["removed"] == closed and 1 <= len(closed) <= 3
    assert doc["equivalence"]["passed"] and doc["equivalence"]["max_abs_logit_diff"] <= 1e-5
    assert doc["equivalence"]["same_top1"] == len(x_test)
    reduced = keras.models.load_model(tmp_path / "out" / "reduced.keras")
    names = {l.name for l in reduced.layers}
    for b in closed:  # the removed units' layers are gone, the others' kept by name
        i = int(b.split("block")[1])
        assert f"u{i}_c2" not in names
    assert {"u0_c2", "u1_c2", "u2_c2", "u3_c2"} - names == {
        f"u{int(b.split('block')[1])}_c2" for b in closed
    }


def test_the_general_locator_takes_the_add_layers_a_user_names():
    net = digits_user_net()
    units = locate_units(net, adds=["u1_add", "u3_add"])
    assert [(u.block, u.add) for u in units] == [
        ("group0/block0", "u1_add"),
        ("group0/block1", "u3_add"),
    ]
    gated = gate_model(net, "k", adds=["u1_add", "u3_add"])
    assert sorted(l.name for l in gate_by_block(gated).values()) == [
        "group0_block0_k_gate",
        "group0_block1_k_gate",
    ]
    with pytest.raises(UserError, match="no two-input Add layer named 'nope'"):
        locate_units(net, adds=["nope"])


def test_this_projects_own_net_gated_by_the_transform_has_the_builders_gates():
    plain = build_model("cifar-basic-20", gate="none")
    built = build_model("cifar-basic-20", gate="eps", epsilon=0.0)
    gated = gate_model(plain, "eps", epsilon=0.0)
    assert [l.name for l in gate_by_block(gated).values()] == [
        l.name for l in gate_by_block(built).values()
    ]
    x = images(4)
    np.testing.assert_array_equal(plain(x, training=False), gated(x, training=False))


def test_keras_resnet_v2_is_a_registry_family_trained_nets_compress_by_graph():
    net = build_model(
        "keras:ResNet50V2", input_shape=(32, 32, 3), classes=10, gate="eps", epsilon=2.5
    )
    assert len(gate_by_block(net)) == 16
    assert net.get_layer("conv2_block1_1_conv").kernel_regularizer is not None  # weight decay
    # blocks read from the graph (the per-block histograms, the report's kernels): a
    # projection unit's pre-activation feeds its shortcut too, so it is not its branch's
    from epsresnet_tf.train.monitor import block_kernels
    from epsresnet_tf.transform import branch_layers

    branches = branch_layers(net)
    assert [layer.name for layer in branches["group1/block0"]][0] == "conv3_block1_1_conv"
    assert [layer.name for layer in branches["group1/block1"]][:2] == [
        "conv3_block2_preact_bn",
        "conv3_block2_preact_relu",
    ]
    kernels = block_kernels(net)
    assert len(kernels) == 16
    assert [n for n, _ in kernels["group3/block2"]] == [f"conv5_block3_{i}_conv" for i in (1, 2, 3)]
    assert net.outputs[0].dtype == "float32"
    with pytest.raises(UserError, match="share=True is an option of this project's nets"):
        build_model("keras:ResNet50V2", input_shape=(32, 32, 3), share=True)
    with pytest.raises(UserError, match="keras:ResNet50V2, keras:ResNet101V2"):
        build_model("keras:ResNet18V2")


@pytest.mark.slow  # ResNet50V2, one epoch on 5,085 images, then compressed: ~3 minutes
def test_the_readmes_python_example_gates_fits_and_compresses(shared_data, tmp_path, monkeypatch):
    """README.md's "Your own Keras net" block, run as written (the data folder is the
    shared subset's): its compressed net predicts as the gated one."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own Keras net", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "gate_model(net" in code and "compress_model(" in code
    code = code.replace(
        '"../shared/data/cifar10-subset"', repr(str(shared_data / "cifar10-subset"))
    )
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (the README's own code)
    doc = scope["doc"]
    assert doc["equivalence"]["passed"] and doc["equivalence"]["max_abs_logit_diff"] <= 1e-5
    assert len(doc["blocks"]) == 16  # one certified gate per unit of ResNet50V2
    reduced = keras.models.load_model(tmp_path / "reduced" / "reduced.keras")
    x = scope["x_test"][:32]
    np.testing.assert_allclose(
        reduced.predict(x, verbose=0), scope["gated"].predict(x, verbose=0), atol=1e-5
    )


@pytest.mark.slow  # ResNet50V2 trained twice (bf16) and compressed: ~3 minutes
def test_a_keras_arch_trains_from_a_keras_file_resumes_and_compresses_by_its_run_folder(
    shared_data, tmp_path, capsys
):
    from test_pretrained import save_legacy_h5

    from epsresnet_tf import cli
    from epsresnet_tf.runfolder import RunFolder, read_history

    imagenet_like = keras.applications.ResNet50V2(weights=None, input_shape=(32, 32, 3))
    save_legacy_h5(imagenet_like, tmp_path / "r50.h5")  # keras.applications' format, 1000 classes
    recipe = tmp_path / "k50.json"
    recipe.write_text(
        json.dumps(
            {
                "name": "k50",
                "dataset": "cifar10",
                "arch": "keras:ResNet50V2",
                "epsilon": 2.5,
                "side_head": True,  # this project's side head, after conv4_block1_out
                "lr_schedule": [[0, 0.01]],
                "adaptive_schedule": [[0, 0.01]],
            }
        )
    )
    data = str(shared_data / "cifar10-subset")
    train = [
        "train", str(recipe), "--data-dir", data, "--out", str(tmp_path / "runs"),
        "--init-from-keras", str(tmp_path / "r50.h5"), "--precision", "bf16",
        "--batch-size", "8", "--steps-per-epoch", "2", "--val-steps", "1", "--quiet",
    ]  # fmt: skip
    assert cli.main([*train, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    fresh = out.split("not in it with this shape: ")[1].split(")")[0].split(", ")
    assert "102 layers from" in out  # all of ResNet50V2's but its 1000-class classifier
    assert sorted(fresh) == ["predictions", "side_head_bn", "side_head_fc"]
    run = tmp_path / "runs" / "k50_from-r50.h5"
    assert cli.main([*train, "--epochs", "2"]) == 0  # resumes: the file is not read again
    assert "layers from" not in capsys.readouterr().out
    rows = read_history(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert len(rows[-1]["blocks"]) == 16 and "group3/block2" in rows[-1]["blocks"]
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    # one unit forced closed in the trained net: compress removes it from Keras's graph
    net = keras.models.load_model(RunFolder(run).model, compile=False)
    conv = net.get_layer("conv3_block2_3_conv")
    conv.set_weights([w * 0 for w in conv.get_weights()])
    net.save(RunFolder(run).model)
    assert cli.main(["compress", str(run), "--max-batches", "2"]) == 0
    cert = json.loads((run / "reduced" / "certificate.json").read_text())
    assert "group1/block1" in cert["removed"]
    assert cert["units"]["group1/block1"] == "conv3_block2_out"
    assert cert["equivalence"]["passed"] and cert["equivalence"]["max_abs_logit_diff"] <= 1e-5
    reduced = keras.models.load_model(run / "reduced" / "reduced.keras")
    assert "conv3_block2_3_conv" not in {layer.name for layer in reduced.layers}


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_open_gates_are_dropped_in_float32_and_kept_in_bfloat16(tmp_path, policy):
    """In bfloat16 the same net as a tf.function and eagerly differs by ~1e-2: a gate's
    removal changes how TensorFlow fuses the conv with its Add, so compress keeps it."""
    from epsresnet_tf.config import keras_precision

    with keras_precision(policy):
        keras.utils.set_random_seed(0)
        gated = gate_model(digits_user_net(), "eps", epsilon=0.0)  # every gate open
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    data = CompressData({"train": [x[:8], x[8:]]}, [(x, np.zeros(16, np.int32))], batch_size=8)
    doc = compress_model(gated, None, {}, data, tmp_path / "reduced")
    assert doc["removed"] == []
    assert doc["equivalence"]["max_abs_logit_diff"] <= 1e-5
    if policy == "float32":
        assert doc["reduced_gates"] == "none"
    else:
        assert doc["reduced_gates"] == "eps" and "bfloat16" in doc["gate_decision"]


@pytest.mark.slow  # ResNet50V2 built and compressed with its side head: ~45 s, for CI
def test_a_keras_net_takes_the_side_head_where_the_imagenet_script_puts_it_and_loses_it_reduced(
    tmp_path,
):
    net = build_model(
        "keras:ResNet50V2",
        input_shape=(32, 32, 3),
        classes=10,
        side_head=True,
        gate="eps",
        epsilon=1e-3,
    )
    assert sorted(net.output) == ["logits", "side_logits"]
    side_input = producer(inputs_of(net.get_layer("side_head_bn"))[0])
    assert side_input.name == "conv4_block1_out"  # group2/block0: ⌊16/2⌋ − 1 = unit 7
    conv = net.get_layer("conv3_block2_3_conv")
    conv.set_weights([w * 0 for w in conv.get_weights()])
    x = images(16)
    data = CompressData({"train": [x[:8], x[8:]]}, [(x, np.zeros(16, np.int32))], batch_size=8)
    doc = compress_model(net, "keras:ResNet50V2", {}, data, tmp_path / "reduced")
    assert "group1/block1" in doc["removed"] and doc["equivalence"]["passed"]
    reduced = keras.models.load_model(tmp_path / "reduced" / "reduced.keras")
    assert not [layer for layer in reduced.layers if layer.name.startswith("side_head")]
    assert reduced.output.shape[-1] == 10
