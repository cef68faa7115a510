"""The model zoo against the papers: parameter counts (docs/semantics.md §11), structure (docs/semantics.md §2–§5),
shared kernels, gated blocks, training steps and `.keras` round trips."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsresnet_tf import blocks, cli
from epsresnet_tf import layers as L
from epsresnet_tf.errors import UserError
from epsresnet_tf.models import build_model, resolve
from epsresnet_tf.models.describe import model_stats


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def matches_published(count, published_millions, rel):
    """Within `rel` of the published figure, or equal to it at the precision it is printed
    with (He et al. print ResNet-110 as "1.7M"; its exact count is 1.73M, see README)."""
    published = published_millions * 1e6
    decimals = len(str(published_millions).split(".")[1]) if "." in str(published_millions) else 0
    return (
        abs(count - published) <= rel * published
        or round(count / 1e6, decimals) == published_millions
    )


# (arch, build options, published trainable parameters in millions, tolerance)
PUBLISHED = [
    ("cifar-basic-110", {}, 1.7, 0.01),
    ("cifar-bottleneck-164", {}, 1.7, 0.01),
    ("cifar-bottleneck-1001", {}, 10.2, 0.015),
    ("imagenet-34", {}, 21.8, 0.01),
    ("imagenet-50", {}, 25.6, 0.01),
    ("imagenet-101", {}, 44.5, 0.01),
    ("imagenet-152", {}, 60.2, 0.01),
    ("wrn-40-4", {}, 8.95, 0.01),
    ("wrn-28-10", {"classes": 100}, 36.54, 0.01),
    ("cifar-bottleneck-164", {"share": True}, 0.93, 0.01),
    ("wrn-40-4", {"share": True}, 5.85, 0.01),
    ("wrn-28-10", {"classes": 100, "share": True}, 26.86, 0.01),
    ("imagenet-34", {"share": True}, 13.6, 0.01),
    ("imagenet-50", {"share": True}, 20.5, 0.01),
    ("imagenet-101", {"share": True}, 29.4, 0.01),
    ("imagenet-152", {"share": True}, 36.8, 0.01),
]


@pytest.mark.parametrize(
    "arch, options, millions, rel",
    PUBLISHED,
    ids=[f"{a}{'-shared' if o.get('share') else ''}" for a, o, _, _ in PUBLISHED],
)
def test_trainable_parameters_match_the_papers(arch, options, millions, rel):
    count = trainable(build_model(arch, **options))
    assert matches_published(count, millions, rel), f"{arch}: {count:,} vs {millions}M"


def test_resnet_110_exact_count_is_the_one_he_et_al_round():
    # Independent arithmetic: 3x3 convs of option-A ResNet-110, FC, and BN gamma/beta.
    n = 18
    convs = 3 * 3 * 3 * 16 + 2 * n * 9 * 16 * 16
    convs += 9 * 16 * 32 + (2 * n - 1) * 9 * 32 * 32 + 9 * 32 * 64 + (2 * n - 1) * 9 * 64 * 64
    fc = 64 * 10 + 10
    # BN: stem, then 2 per unit except the network's first unit (1), then the final one.
    bn = 2 * (16 + (2 * n - 1) * 16 + 2 * n * 32 + 2 * n * 64 + 64)
    bn -= 2 * (32 - 16) + 2 * (
        64 - 32
    )  # the pre-activation of a group's first unit sees the old width
    assert trainable(build_model("cifar-basic-110")) == convs + fc + bn


def test_moving_statistics_are_parameters_keras_counts_but_not_trainable():
    stats = model_stats(build_model("cifar-basic-20"))
    bn_channels = sum(
        layer.gamma.shape[0]
        for layer in build_model("cifar-basic-20").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert stats["params"] - stats["trainable_params"] == 2 * bn_channels


@pytest.mark.parametrize(
    "arch, convs, blocks_, macs_m",
    [
        ("cifar-basic-110", 109, 54, 253),
        ("cifar-bottleneck-164", 166, 54, None),
        ("imagenet-50", 53, 16, 4089),
        ("imagenet-18", 20, 8, 1814),
    ],
)
def test_structure_counts(arch, convs, blocks_, macs_m):
    stats = model_stats(build_model(arch))
    assert stats["conv_layers"] == convs
    assert stats["blocks"] == blocks_
    if macs_m:
        assert abs(stats["macs"] / 1e6 - macs_m) / macs_m < 0.01


def test_macs_of_a_small_net_by_hand():
    # cifar-basic-8: stem, then one unit per group; option A shortcuts carry no MACs.
    hw = {0: 32 * 32, 1: 16 * 16, 2: 8 * 8}
    macs = hw[0] * 9 * 3 * 16
    macs += hw[0] * 9 * 16 * 16 * 2
    macs += hw[1] * 9 * 16 * 32 + hw[1] * 9 * 32 * 32
    macs += hw[2] * 9 * 32 * 64 + hw[2] * 9 * 64 * 64
    macs += 64 * 10
    assert model_stats(build_model("cifar-basic-8"))["macs"] == macs


def test_shared_kernel_counted_once_but_its_macs_at_every_use():
    plain, shared = (model_stats(build_model("cifar-basic-20", share=s)) for s in (False, True))
    assert plain["macs"] == shared["macs"]
    # 3 stages x 3 units: 9 second convs become 3 shared kernels
    assert plain["conv_layers"] - shared["conv_layers"] == 9 - 3


def test_side_head_sits_after_the_middle_block():
    model = build_model("cifar-basic-110", side_head=True)
    assert set(model.output.keys()) == {"logits", "side_logits"}
    # N = 54 units, ⌊N/2⌋ = 27 → group 1 (0-based), block 9 = n // 2 as in the authors' res2.{n//2}
    side_bn = model.get_layer("side_head_bn")
    assert side_bn.input is model.get_layer("group1_block9_add").output


def test_group_first_units_use_the_faithful_shortcuts():
    basic = build_model("cifar-basic-20")
    names = [layer.name for layer in basic.layers]
    assert "group1_block0_shortcut_pool_pad" in names and "group2_block0_shortcut_pool_pad" in names
    assert not any("shortcut_conv" in n for n in names)
    assert "group0_block0_preact_bn" not in names  # the network's first unit skips its BN-ReLU
    assert "group1_block0_preact_bn" in names
    # option A: the shortcut takes the raw (not pre-activated) input
    pool_pad = basic.get_layer("group1_block0_shortcut_pool_pad")
    assert pool_pad.input is basic.get_layer("group0_block2_add").output

    net = build_model("imagenet-18", input_shape=(64, 64, 3))
    projection = net.get_layer("group1_block0_shortcut_conv")
    # projection shortcuts see the pre-activated input (applied before the split)
    assert projection.input is net.get_layer("group1_block0_preact_relu").output
    assert projection.strides == (2, 2)
    assert "group0_block0_shortcut_conv" not in [layer.name for layer in net.layers]


def _block_io(model, add_name):
    add = model.get_layer(add_name)
    probe = keras.Model(model.input, [add.input[1], add.output])
    return probe


def test_a_block_whose_gate_is_zero_outputs_exactly_its_shortcut():
    rng = np.random.default_rng(0)
    model = build_model("cifar-basic-14", gate="eps", epsilon=1e9)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    for name in ("group0_block1_add", "group1_block1_add", "group1_block0_add"):
        shortcut, out = _block_io(model, name)(images, training=True)
        assert np.array_equal(out.numpy(), shortcut.numpy()), name
    # and with epsilon = 0 the same block is a plain residual unit
    for gate in L.gate_layers(model):
        gate.epsilon.assign(0.0)
    shortcut, out = _block_io(model, "group0_block1_add")(images)
    assert not np.array_equal(out.numpy(), shortcut.numpy())


def test_a_k_gated_block_with_non_positive_k_is_the_identity():
    rng = np.random.default_rng(1)
    model = build_model("cifar-basic-14", gate="k")
    gate = model.get_layer("group2_block1_k_gate")
    gate.k.assign(-0.25)
    probe = keras.Model(model.input, [gate.input[1], gate.output])
    shortcut, out = probe(rng.normal(size=(2, 32, 32, 3)).astype(np.float32))
    assert np.array_equal(out.numpy(), shortcut.numpy())
    assert all(w.name != "k" or w.trainable for w in model.weights)
    assert sum(1 for w in model.trainable_weights if w.name == "k") == 6


def test_shared_kernel_is_one_variable_receiving_the_sum_of_its_gradients():
    rng = np.random.default_rng(2)
    n = 3  # cifar-basic-20: three units per stage, all of them sharing (the basic-net default)
    shared = build_model("cifar-basic-20", share=True, weight_decay=0)
    untied = build_model("cifar-basic-20", share=False, weight_decay=0)
    # copy weights; each untied second conv gets the stage's shared kernel
    for layer in untied.layers:
        if not layer.weights:
            continue
        parts = layer.name.split("_")
        if layer.name.endswith("_conv2"):
            source = shared.get_layer(f"{parts[0]}_shared_conv3x3")
        else:
            source = shared.get_layer(layer.name)
        layer.set_weights(source.get_weights())
    images = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype(np.float32))
    labels = tf.constant([1, 2, 3, 4])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grads(model, variables):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        return [g.numpy() for g in tape.gradient(loss, variables)]

    # the two nets compute the same function
    np.testing.assert_allclose(shared(images).numpy(), untied(images).numpy(), rtol=1e-5, atol=1e-5)
    for g in range(3):
        kernel_layer = shared.get_layer(f"group{g}_shared_conv3x3")
        uses = sum(1 for node in kernel_layer._inbound_nodes)
        assert uses == n, "one kernel used by every unit of the stage"
        assert sum(1 for w in shared.trainable_weights if w is kernel_layer.kernel) == 1
        (shared_grad,) = grads(shared, [kernel_layer.kernel])
        per_use = grads(
            untied, [untied.get_layer(f"group{g}_block{b}_conv2").kernel for b in range(n)]
        )
        np.testing.assert_allclose(shared_grad, sum(per_use), rtol=1e-4, atol=1e-6)
        # the uses' gradients differ, so no single one (nor n times one) would pass for the sum
        for one in per_use:
            assert not np.allclose(shared_grad, one, rtol=1e-2, atol=1e-6)
            assert not np.allclose(shared_grad, n * one, rtol=1e-2, atol=1e-6)


def test_weight_decay_is_half_l2_on_conv_and_fc_kernels_only():
    model = build_model("cifar-basic-8", gate="eps", weight_decay=2e-4)
    model(np.zeros((1, 32, 32, 3), np.float32))
    kernels = [
        w
        for layer in model.layers
        for w in layer.weights
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and w.name == "kernel"
    ]
    expected = 2e-4 * 0.5 * sum(float(np.sum(np.square(w.numpy()))) for w in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_initialisers_he_fan_out_and_gaussian():
    he = build_model("cifar-basic-8").get_layer("group2_block0_conv2").kernel.numpy()
    fan_out = 3 * 3 * 64
    assert abs(he.std() / np.sqrt(2.0 / fan_out) - 1) < 0.1
    gauss = (
        build_model("cifar-basic-8", init="gaussian")
        .get_layer("group2_block0_conv2")
        .kernel.numpy()
    )
    assert abs(gauss.std() / 0.01 - 1) < 0.1


FAMILY_CASES = [
    ("cifar-basic-8", dict(gate="eps", epsilon=0.5, side_head=True), (32, 32, 3)),
    ("cifar-bottleneck-11", dict(gate="k", share=True), (16, 16, 3)),
    ("imagenet-18", dict(gate="eps", epsilon=1.0, share=True, classes=10), (32, 32, 3)),
    ("imagenet-50", dict(side_head=True, classes=10), (32, 32, 3)),
    ("wrn-10-2", dict(dropout=0.3, share=True), (16, 16, 3)),
    ("mnist-plain-4", dict(gate="k"), None),
    ("mnist-res-4", dict(gate="eps", epsilon=0.5, side_head=True), None),
]


@pytest.mark.parametrize("arch, options, shape", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_every_family_runs_forward_and_one_training_step(arch, options, shape):
    rng = np.random.default_rng(3)
    model = build_model(arch, input_shape=shape, **options)
    x = rng.normal(size=(4,) + tuple(model.input.shape[1:])).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    side = options.get("side_head")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss={"logits": loss, "side_logits": loss} if side else loss,
        loss_weights={"logits": 1.0, "side_logits": 0.1} if side else None,
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, {"logits": y, "side_logits": y} if side else y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert changed > len(before) // 2
    logits = model.predict(x, verbose=0)
    logits = logits["logits"] if side else logits
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits))


@pytest.mark.parametrize(
    "arch, options",
    [
        ("cifar-basic-14", dict(gate="eps", epsilon=0.8, side_head=True, share=True)),
        (
            "cifar-basic-8",
            dict(
                gate="eps",
                epsilon=0.3,
                gate_scope="sample",
                shortcut="exclusive_gating",
                gate_bias=-2.0,
            ),
        ),
        ("cifar-basic-14", dict(gate="k", share=True, shortcut="conv1x1")),
        ("mnist-plain-4", dict(gate="k")),
    ],
)
def test_gated_models_round_trip_through_dot_keras(tmp_path, arch, options):
    rng = np.random.default_rng(4)
    model = build_model(arch, **options)
    x = rng.normal(size=(3,) + tuple(model.input.shape[1:])).astype(np.float32)
    model(x, training=True)  # move BN statistics and the gate monitors off their initial values
    for i, gate in enumerate(L.gate_layers(model)):
        if isinstance(gate, L.ResidualGate):  # k off its initial 1, one of them closed
            gate.k.assign(-0.5 if i == 1 else 0.3 + 0.2 * i)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected, actual = model(x), loaded(x)
    for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(actual)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(L.gate_layers(loaded)) == len(L.gate_layers(model)) > 0
    for a, b in zip(L.gate_layers(model), L.gate_layers(loaded)):
        assert type(a) is type(b) and a.name == b.name
        if isinstance(a, L.EpsilonGate):
            assert float(b.epsilon.numpy()) == float(a.epsilon.numpy())
            assert float(b.discarded_ema.numpy()) == float(a.discarded_ema.numpy())
            assert b.scope == a.scope
        else:
            assert float(b.k.numpy()) == float(a.k.numpy())
    # a shared kernel stays one variable used by several units
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    for layer in model.layers:
        if layer.name.endswith("_shared_conv3x3"):
            assert len(loaded.get_layer(layer.name)._inbound_nodes) == len(layer._inbound_nodes) > 1


def test_a_grouped_net_trains_each_group_as_a_net_of_its_own(tmp_path):
    # gate_group and bn_group G (virtual towers): a training pass over 2 groups equals the
    # ungrouped net's training pass over each group alone; the groups survive .keras.
    rng = np.random.default_rng(5)
    grouped = build_model("cifar-basic-8", gate="eps", epsilon=1.0, gate_group=2, bn_group=2)
    plain = build_model("cifar-basic-8", gate="eps", epsilon=1.0)
    plain.set_weights(grouped.get_weights())
    assert {g.group_size for g in L.gate_layers(grouped)} == {2}
    bns = [b for b in grouped.layers if isinstance(b, keras.layers.BatchNormalization)]
    assert bns and {b.group_size for b in bns} == {2}
    x = np.concatenate(
        [rng.normal(size=(2, 32, 32, 3)) * 0.2, rng.normal(size=(2, 32, 32, 3)) * 3 + 1]
    ).astype(np.float32)
    expected = np.concatenate(
        [plain(x[:2], training=True).numpy(), plain(x[2:], training=True).numpy()]
    )
    np.testing.assert_allclose(grouped(x, training=True).numpy(), expected, rtol=1e-4, atol=1e-4)
    whole = build_model("cifar-basic-8", gate="eps", epsilon=1.0)
    whole.set_weights(grouped.get_weights())
    assert np.abs(whole(x, training=True).numpy() - expected).max() > 1e-2
    path = tmp_path / "grouped.keras"
    grouped.save(path)
    loaded = keras.saving.load_model(path)
    assert {g.group_size for g in L.gate_layers(loaded)} == {2}
    np.testing.assert_array_equal(loaded(x[:3]).numpy(), grouped(x[:3]).numpy())
    for options in (dict(gate_group=0), dict(bn_group=1.5)):
        with pytest.raises(UserError, match="group"):
            build_model("cifar-basic-8", gate="eps", **options)


def test_channels_first_model_agrees_with_channels_last():
    rng = np.random.default_rng(7)
    last = build_model("cifar-basic-8", gate="eps", epsilon=0.1)
    first = build_model("cifar-basic-8", gate="eps", epsilon=0.1, data_format="channels_first")
    for layer in last.layers:
        if layer.weights:
            first.get_layer(layer.name).set_weights(layer.get_weights())
    convs = [layer for layer in first.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.data_format == "channels_first" for layer in convs)
    assert all(
        layer.axis in (1, [1])
        for layer in first.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert first.get_layer("group2_block0_add").output.shape == (None, 64, 8, 8)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    try:
        out_first = first(x).numpy()
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as err:
        pytest.skip(f"this TensorFlow build has no NCHW convolution on CPU: {str(err)[:80]}")
    np.testing.assert_allclose(out_first, last(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("cifar-basic-111", "6n+2"),
        ("imagenet-77", "18, 34, 50, 101, 152, 200"),
        ("wrn-41-4", "6n+4"),
        ("mnist-res-5", "even"),
        ("resnet-50", "valid are"),
    ],
)
def test_invalid_names_are_one_line_errors_listing_what_is_valid(name, fragment):
    with pytest.raises(UserError) as err:
        resolve(name)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_invalid_options_are_user_errors():
    for options in (
        dict(gate="maybe"),
        dict(epsilon=-1.0),
        dict(order="sideways"),
        dict(data_format="nchw"),
    ):
        with pytest.raises(UserError):
            build_model("cifar-basic-8", **options)
    with pytest.raises(UserError, match="mnist-res"):
        build_model("mnist-plain-4", gate="eps")


def test_describe_cli_json_and_table(capsys):
    assert cli.main(["describe", "cifar-basic-20", "--gate", "eps", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    model = build_model("cifar-basic-20", gate="eps")
    assert stats["params"] == model.count_params()
    assert stats["trainable_params"] == trainable(model)
    assert stats["blocks"] == 9 and stats["conv_layers"] == 19 and stats["gates"] == 9
    assert stats["macs"] > 0
    assert cli.main(["describe", "cifar-basic-20", "--share", "--classes", "100"]) == 0
    table = capsys.readouterr().out
    assert "trainable_params" in table and "macs" in table
    assert cli.main(["describe", "imagenet-77"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imagenet-77" in err[0]


def test_gate_monitors_update_inside_compiled_fit():
    rng = np.random.default_rng(8)
    model = build_model("cifar-basic-8", gate="eps", epsilon=1e9)  # every gate closed: T = 0
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)  # two steps
    for gate in L.gate_layers(model):
        # tensorpack's EMA of 1 over steps 0 and 1: decays 0.1 and 2/11 in effect
        np.testing.assert_allclose(gate.discarded_ema.numpy(), 1 - 0.1 * 2 / 11, rtol=1e-5)
        assert float(gate.gate_value.numpy()) == 0.0
        assert float(gate.response_max.numpy()) > 0.0


def test_mixed_precision_model_trains_with_float32_gates_and_logits():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model("cifar-basic-8", gate="eps", epsilon=0.5, side_head=True)
        assert model.get_layer("group0_block0_conv1").compute_dtype == "float16"
        assert model.output["logits"].dtype == "float32"
        assert all(g.epsilon.dtype == "float32" for g in L.gate_layers(model))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01), loss={"logits": loss, "side_logits": loss}
        )
        x = np.random.default_rng(9).normal(size=(4, 32, 32, 3)).astype(np.float32)
        y = np.arange(4)
        history = model.fit(x, {"logits": y, "side_logits": y}, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize(
    "arch, counts, removed, transition",
    [
        ("cifar-basic-20", [2, 3, 1], (1,), "group1_transition_shortcut_pool_pad"),
        ("cifar-bottleneck-20", [1, 2, 2], (0,), "group0_transition_shortcut_conv"),
        ("imagenet-18", [2, 1, 0, 2], (1, 2), "group2_transition_shortcut_conv"),
        ("wrn-16-2", [2, 1, 2], (1,), "group1_transition_preact_bn"),
    ],
)
def test_reduced_layouts_keep_the_transition_where_a_first_unit_went(
    arch, counts, removed, transition
):
    model = build_model(
        arch,
        blocks_per_group=counts,
        first_removed=removed,
        share=True,
        classes=10,
        input_shape=(32, 32, 3),
    )
    names = [layer.name for layer in model.layers]
    assert transition in names
    assert model_stats(model)["blocks"] == sum(counts)
    for g, count in enumerate(counts):
        assert (f"group{g}_block{count - 1}_add" in names) == (count > 0)
        assert f"group{g}_block{count}_add" not in names
        if g in removed and count:
            # every remaining unit is a former non-first one: same shapes, identity shortcut
            assert not any(n.startswith(f"group{g}_block0_shortcut") for n in names)
    x = np.zeros((1, 32, 32, 3), np.float32)
    assert model(x).shape == (1, 10)


# --- ShaResNet sharing defaults (docs/semantics.md §4: the parameter counts decide them) ------------


@pytest.mark.parametrize(
    "arch, options, millions",
    [
        ("wrn-40-4", {}, 5.85),  # wide nets: every block but the stage's first
        ("imagenet-34", {"classes": 1000}, 13.6),  # ImageNet basic nets: every block
    ],
)
def test_the_other_sharing_setting_misses_the_published_count(arch, options, millions):
    key, family, args = resolve(arch)
    default = family.share_first if family.share_first is not None else arch == "imagenet-34"
    other = trainable(build_model(arch, share=True, share_first=not default, **options))
    assert not matches_published(other, millions, 0.01), f"{arch}: {other:,} also matches"


def test_bottleneck_nets_cannot_share_the_strided_first_3x3():
    for arch in ("cifar-bottleneck-20", "imagenet-50"):
        with pytest.raises(UserError, match="all but|every block but"):
            build_model(arch, share=True, share_first=True, input_shape=(32, 32, 3))


# --- side head placement (docs/semantics.md §5) -----------------------------------------------------


def _layer_of(tensor):
    return tensor._keras_history.operation


@pytest.mark.parametrize("n", [2, 3, 5])
def test_cifar_side_head_is_after_res2_n_over_2_which_is_block_floor_n_over_2(n):
    # The authors' code attaches it after `res2.{n//2}` (second group, 1-based names): the
    # 0-based global unit n + n//2, which is ⌊3n/2⌋ = ⌊N/2⌋ for odd and even n alike.
    model = build_model(f"cifar-basic-{6 * n + 2}", side_head=True)
    assert _layer_of(model.get_layer("side_head_bn").input).name == f"group1_block{n // 2}_add"
    assert n + n // 2 == blocks.side_head_index([n] * 3) == (3 * n) // 2
    assert model.get_layer("side_head_fc").units == 10


#: Blocks per group of the authors' ImageNet nets, imagenetEpsilonResnet.py:103-109 (and
#: :301-307): the depths their script builds.
AUTHORS_IMAGENET_DEFS = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _authors_imagenet_side_block(defs):
    # imagenetEpsilonResnet.py:310: SIDE_POSITION = sum(defs)/2 - sum(defs[:2]) - 1 under
    # Python 2 (integer division), the block index inside group 2.
    return sum(defs) // 2 - sum(defs[:2]) - 1


@pytest.mark.parametrize(
    "depth,expected",
    [(101, "group2_block8_add"), (152, "group2_block13_add"), (50, "group2_block0_add")],
)
def test_imagenet_side_head_follows_the_authors_block_of_group_2(depth, expected):
    from epsresnet_tf.models.imagenet import DEPTHS

    counts = AUTHORS_IMAGENET_DEFS[depth]
    assert list(DEPTHS[depth][0]) == counts  # our net has the script's blocks
    assert expected == f"group2_block{_authors_imagenet_side_block(counts)}_add"
    model = build_model(f"imagenet-{depth}", side_head=True, classes=10, input_shape=(32, 32, 3))
    assert _layer_of(model.get_layer("side_head_bn").input).name == expected


def test_imagenet_side_head_sits_inside_group_2_for_every_depth():
    from epsresnet_tf.models.imagenet import DEPTHS

    assert set(AUTHORS_IMAGENET_DEFS) <= set(DEPTHS)
    for depth, (counts, _) in DEPTHS.items():  # the script's depths, and ours (200) beside
        counts = list(counts)
        assert counts == AUTHORS_IMAGENET_DEFS.get(depth, counts), depth
        index = blocks.imagenet_side_head_index(counts)
        if depth == 18:  # the script's block index is -1: it attaches no side head
            assert _authors_imagenet_side_block(counts) == -1 and index is None
            continue
        assert index == sum(counts[:2]) + _authors_imagenet_side_block(counts)
        starts = np.cumsum([0] + counts)
        group = int(np.searchsorted(starts, index, side="right") - 1)
        assert group == 2, f"imagenet-{depth}: side unit {index} is in group {group}"
    model = build_model("imagenet-34", side_head=True, classes=10, input_shape=(32, 32, 3))
    # [3, 4, 6, 3]: 16 // 2 - 7 - 1 = 0 → group 2, block 0
    assert _layer_of(model.get_layer("side_head_bn").input).name == "group2_block0_add"
    no_side = build_model("imagenet-18", side_head=True, classes=10, input_shape=(32, 32, 3))
    assert not isinstance(no_side.output, dict)


def test_side_head_is_off_by_default_and_costs_a_bn_and_fc_at_its_width():
    plain = trainable(build_model("cifar-basic-20"))
    with_side = trainable(build_model("cifar-basic-20", side_head=True))
    # after group 1 (32 channels): BN γ, β and FC(32 → 10) with bias
    assert with_side - plain == 2 * 32 + 32 * 10 + 10


# --- He et al. 2016 variants against their definitions (seed §3–§4) --------------------


def _randomise_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.5, c),
                    rng.normal(0, 0.5, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )


def _np_bn(layer, v):
    gamma, beta, mean, var = layer.get_weights()
    return gamma * (v - mean) / np.sqrt(var + layer.epsilon) + beta


def _np_conv(layer, v):
    return tf.nn.conv2d(v, layer.kernel, 1, "SAME").numpy()


def _relu(v):
    return np.maximum(v, 0)


def _unit_probe(model, p, output_layer):
    """Model from the input to (unit input x, unit output) of an identity-shaped unit."""
    x = model.get_layer(p + "conv1").input
    while _layer_of(x).name.startswith(p):  # walk back over the unit's own pre-activation
        x = _layer_of(x).input
    return keras.Model(model.input, [x, model.get_layer(output_layer).output])


@pytest.mark.parametrize("order", blocks.ORDERS)
def test_he_et_al_unit_orders_follow_their_definitions(order):
    """Fig. 4: (a) x_{l+1} = ReLU(x + BN(W2 ReLU(BN(W1 x)))); (b) ReLU(BN(x + W2 ReLU(BN(W1 x))));
    (c) x + ReLU(BN(W2 ReLU(BN(W1 x)))); (d) x + BN(W2 ReLU(BN(W1 ReLU(x))));
    (e) x + W2 ReLU(BN(W1 ReLU(BN(x))))."""
    rng = np.random.default_rng(10)
    model = build_model("cifar-basic-14", order=order)
    _randomise_batchnorm(model, rng)
    p = "group0_block1_"
    out_name = {"original": "out_relu", "bn_after_add": "out_relu"}.get(order, "add")
    x, out = (
        t.numpy()
        for t in _unit_probe(model, p, p + out_name)(
            rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
        )
    )
    get = model.get_layer
    w1, w2 = (lambda v: _np_conv(get(p + "conv1"), v)), (lambda v: _np_conv(get(p + "conv2"), v))
    bn1, bn2 = (lambda v: _np_bn(get(p + "1_bn"), v)), (lambda v: _np_bn(get(p + "2_bn"), v))
    expected = {
        "original": lambda: _relu(x + bn2(w2(_relu(bn1(w1(x)))))),
        "bn_after_add": lambda: _relu(_np_bn(get(p + "out_bn"), x + w2(_relu(bn1(w1(x)))))),
        "relu_before_add": lambda: x + _relu(bn2(w2(_relu(bn1(w1(x)))))),
        "relu_preact": lambda: x + bn2(w2(_relu(bn1(w1(_relu(x)))))),
        "full_preact": lambda: x + w2(_relu(bn1(w1(_relu(_np_bn(get(p + "preact_bn"), x)))))),
    }[order]()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # the unit has exactly the BNs its definition names: no more, no fewer
    unit_bns = {
        layer.name[len(p) :]
        for layer in model.layers
        if layer.name.startswith(p) and isinstance(layer, keras.layers.BatchNormalization)
    }
    assert (
        unit_bns
        == {
            "original": {"1_bn", "2_bn"},
            "bn_after_add": {"1_bn", "out_bn"},
            "relu_before_add": {"1_bn", "2_bn"},
            "relu_preact": {"1_bn", "2_bn"},
            "full_preact": {"preact_bn", "1_bn"},
        }[order]
    )


def _shortcut_probe(model, p, merge_layer):
    residual = model.get_layer(p + "conv2").output
    return _unit_probe(model, p, merge_layer), keras.Model(model.input, residual)


@pytest.mark.parametrize("shortcut_scale, residual_scale", [(0.5, 0.5), (0.5, 1.0), (0.0, 1.0)])
def test_constant_scaling_rows_of_he_et_al_table_1(shortcut_scale, residual_scale):
    rng = np.random.default_rng(11)
    model = build_model(
        "cifar-basic-14",
        shortcut="constant_scaling",
        order="original",
        shortcut_scale=shortcut_scale,
        residual_scale=residual_scale,
    )
    p = "group0_block1_"
    unit, branch = _shortcut_probe(model, p, p + "add")
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    (x, out), f = [t.numpy() for t in unit(images)], branch(images).numpy()
    f = _np_bn(model.get_layer(p + "2_bn"), f)  # original unit: F ends in BN
    np.testing.assert_allclose(out, residual_scale * f + shortcut_scale * x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["exclusive_gating", "shortcut_only_gating"])
def test_sigmoid_gated_shortcuts_in_a_unit(variant):
    rng = np.random.default_rng(12)
    model = build_model("cifar-basic-14", shortcut=variant, gate_bias=-6.0)
    p = "group0_block1_"
    gate = model.get_layer(p + "shortcut_gate")
    # every identity-shaped unit is gated, each with the bias initialised to b_g
    gated = [layer for layer in model.layers if isinstance(layer, L.SigmoidShortcutGate)]
    assert len(gated) == 4  # 6 units, two of them change shape (option A)
    for layer in gated:
        np.testing.assert_array_equal(layer.gate_conv.bias.numpy(), -6.0)
    w = rng.normal(0, 0.3, size=gate.gate_conv.kernel.shape).astype(np.float32)
    gate.gate_conv.set_weights([w, rng.normal(0, 0.5, w.shape[-1]).astype(np.float32)])
    unit, branch = _shortcut_probe(model, p, p + "shortcut_gate")
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    (x, out), f = [t.numpy() for t in unit(images)], branch(images).numpy()
    _, bias = gate.gate_conv.get_weights()
    g = 1 / (1 + np.exp(-(_np_conv(gate.gate_conv, x) + bias)))
    expected = g * f + (1 - g) * x if variant == "exclusive_gating" else f + (1 - g) * x
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_conv1x1_and_dropout_shortcuts():
    rng = np.random.default_rng(13)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    p = "group0_block1_"
    conv_net = build_model("cifar-basic-14", shortcut="conv1x1")
    unit, branch = _shortcut_probe(conv_net, p, p + "add")
    (x, out), f = [t.numpy() for t in unit(images)], branch(images).numpy()
    np.testing.assert_allclose(
        out, f + _np_conv(conv_net.get_layer(p + "shortcut_conv"), x), rtol=1e-4, atol=1e-4
    )

    drop_net = build_model("cifar-basic-14", shortcut="dropout")
    assert drop_net.get_layer(p + "shortcut_dropout").rate == 0.5
    unit, branch = _shortcut_probe(drop_net, p, p + "add")
    x, out = (t.numpy() for t in unit(images))  # inference: the identity
    np.testing.assert_allclose(out, branch(images).numpy() + x, rtol=1e-5, atol=1e-5)
    probe = keras.Model(
        drop_net.input,
        [
            drop_net.get_layer(p + "shortcut_dropout").input,
            drop_net.get_layer(p + "shortcut_dropout").output,
        ],
    )
    x, dropped = (t.numpy() for t in probe(images, training=True))
    kept = dropped != 0
    assert 0.4 < kept[x != 0].mean() < 0.6  # each element dropped with probability 0.5 ...
    np.testing.assert_allclose(dropped[kept], 2 * x[kept], rtol=1e-5)  # ... Keras scales by 1/(1-p)


@pytest.mark.parametrize("variant", blocks.SHORTCUTS)
def test_the_epsilon_gate_stays_on_every_unit_whatever_the_shortcut(variant):
    model = build_model("cifar-basic-14", gate="eps", epsilon=1e9, shortcut=variant)
    gates = L.gate_layers(model)
    assert [g.name for g in gates] == [
        f"group{g}_block{b}_eps_gate" for g in range(3) for b in range(2)
    ]
    # a closed gate removes the branch: for identity-shaped units the shortcut variant alone
    p = "group0_block1_"
    merge = {"exclusive_gating": "shortcut_gate", "shortcut_only_gating": "shortcut_gate"}.get(
        variant, "add"
    )
    probe = keras.Model(
        model.input, [model.get_layer(p + "eps_gate").output, model.get_layer(p + merge).output]
    )
    gated, _ = probe(np.ones((1, 32, 32, 3), np.float32), training=True)
    assert not gated.numpy().any()


def test_k_gates_refuse_the_shortcut_variants_that_merge_by_themselves():
    for variant in blocks.MERGING_SHORTCUTS:
        with pytest.raises(UserError, match="gate 'k'"):
            build_model("cifar-basic-8", gate="k", shortcut=variant)
    for variant in ("conv1x1", "dropout"):
        assert len(L.gate_layers(build_model("cifar-basic-8", gate="k", shortcut=variant))) == 3


# --- wide nets and the MNIST nets ------------------------------------------------------


def test_wide_resnet_dropout_sits_between_the_two_convs():
    model = build_model("wrn-16-2", dropout=0.3)
    for g in range(3):
        for b in range(2):
            p = f"group{g}_block{b}_"
            drop = model.get_layer(p + "dropout")
            assert drop.rate == 0.3
            assert _layer_of(drop.input).name == p + "1_relu"  # after the second BN-ReLU ...
            assert model.get_layer(p + "conv2").input is drop.output  # ... before the second conv
    assert not any(
        isinstance(layer, keras.layers.Dropout) for layer in build_model("wrn-16-2").layers
    )
    with pytest.raises(UserError, match="basic units"):
        build_model("cifar-bottleneck-11", dropout=0.3)


def test_mnist_nets_follow_the_gates_paper():
    plain = build_model("mnist-plain-50")
    dense = [layer for layer in plain.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [50] * 51 + [10]
    stem = plain.get_layer("stem_dense")
    assert stem.activation is keras.activations.linear  # "a 50-unit linear layer"
    assert _layer_of(plain.get_layer("group0_block0_1_dense").input) is stem
    for b in (0, 49):  # plain layers: Dot-BN-ReLU
        p = f"group0_block{b}_1_"
        assert _layer_of(plain.get_layer(p + "bn").input).name == p + "dense"
        assert _layer_of(plain.get_layer(p + "relu").input).name == p + "bn"
    res = build_model("mnist-res-50")
    assert model_stats(res)["blocks"] == 25 and model_stats(plain)["blocks"] == 50
    assert sum(isinstance(layer, keras.layers.Dense) for layer in res.layers) == 52
    # residual blocks of two such layers: u = F(x) + x
    rng = np.random.default_rng(14)
    _randomise_batchnorm(res, rng)
    images = rng.normal(size=(3, 28, 28, 1)).astype(np.float32)
    add = res.get_layer("group0_block3_add")
    x, f, out = (
        t.numpy()
        for t in keras.Model(
            res.input, [add.input[1], res.get_layer("group0_block3_2_relu").output, add.output]
        )(images)
    )
    assert _layer_of(add.input[0]).name == "group0_block3_2_relu"
    np.testing.assert_allclose(out, f + x, rtol=1e-5, atol=1e-5)


def test_mnist_plain_gated_layer_is_g_k_f_plus_one_minus_g_k_x():
    rng = np.random.default_rng(15)
    model = build_model("mnist-plain-4", gate="k")
    gate = model.get_layer("group0_block2_k_gate")
    gate.k.assign(0.3)
    probe = keras.Model(model.input, [gate.input[1], gate.input[0], gate.output])
    x, f, out = (t.numpy() for t in probe(rng.normal(size=(3, 28, 28, 1)).astype(np.float32)))
    assert _layer_of(gate.input[0]).name == "group0_block2_1_relu"
    np.testing.assert_allclose(out, 0.3 * f + 0.7 * x, rtol=1e-5, atol=1e-6)
    gate.k.assign(-1.0)  # g(k) = 0: the layer passes x through
    np.testing.assert_array_equal(
        probe(np.ones((1, 28, 28, 1), np.float32))[2].numpy(),
        probe(np.ones((1, 28, 28, 1), np.float32))[0].numpy(),
    )


# --- weight decay on k, ε changed during fit -------------------------------------------


@pytest.mark.parametrize("k_decay", [0.0, 0.01])
def test_k_gets_weight_decay_only_when_asked(k_decay):
    model = build_model("cifar-basic-8", gate="k", weight_decay=2e-4, k_decay=k_decay)
    model(np.zeros((1, 32, 32, 3), np.float32))
    gates = L.gate_layers(model)
    for i, gate in enumerate(gates):
        gate.k.assign(2.0 + i)
    kernels = [
        layer.kernel
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    expected = 2e-4 * 0.5 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    expected += k_decay * sum((2.0 + i) ** 2 for i in range(len(gates)))
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_a_callback_changes_epsilon_between_steps_of_one_fit():
    class CloseGatesAfterFirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                for gate in L.gate_layers(self.model):
                    gate.epsilon.assign(1e9)

    model = build_model("cifar-basic-8", gate="eps", epsilon=0.0)  # T = 1 at first
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(16).normal(size=(8, 32, 32, 3)).astype(np.float32)
    model.fit(
        x,
        np.arange(8),
        batch_size=4,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[CloseGatesAfterFirstStep()],
    )
    for gate in L.gate_layers(model):
        assert float(gate.gate_value.numpy()) == 0.0  # the second step saw the new ε ...
        # ... the first did not: EMA of (0, 1) from step 0 (decay 2/11 in effect at step 1)
        np.testing.assert_allclose(gate.discarded_ema.numpy(), 1 - 2 / 11, rtol=1e-5)


# --- the command line ------------------------------------------------------------------


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("describe", "data", "train", "compress", "evaluate", "report"):
        assert f"\n    {command} " in text, command


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["describe", "cifar-basic-111"], "6n+2"),
        (["describe", "wrn-41-4"], "6n+4"),
        (["describe", "cifar-basic-20", "--gate", "maybe"], "choose from"),
        (["describe", "cifar-basic-20", "--classes", "0"], "classes must be >= 1"),
        (["describe"], "arch"),
    ],
)
def test_describe_bad_input_is_one_line_exit_2(capsys, argv, fragment):
    try:
        rc = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and captured.out == ""
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in captured.err


def test_the_installed_command_prints_only_the_one_line_error():
    # TensorFlow's C++ start-up notices go to stderr before logging is configured; the
    # command holds them back so the error stays alone.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "epsresnet_tf.cli", "describe", "imagenet-77"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "epsresnet describe: error: invalid depth in 'imagenet-77': "
        "use imagenet-D with D in 18, 34, 50, 101, 152, 200"
    ]
