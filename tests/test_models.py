"""The model zoo against the papers: parameter counts (SPEC §11), structure (SPEC §2–§5),
shared kernels, gated blocks, training steps and `.keras` round trips."""
import json

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
    return abs(count - published) <= rel * published or round(count / 1e6, decimals) == published_millions


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


@pytest.mark.parametrize("arch, options, millions, rel", PUBLISHED,
                         ids=[f"{a}{'-shared' if o.get('share') else ''}" for a, o, _, _ in PUBLISHED])
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
    bn -= 2 * (32 - 16) + 2 * (64 - 32)  # the pre-activation of a group's first unit sees the old width
    assert trainable(build_model("cifar-basic-110")) == convs + fc + bn


def test_moving_statistics_are_parameters_keras_counts_but_not_trainable():
    stats = model_stats(build_model("cifar-basic-20"))
    bn_channels = sum(layer.gamma.shape[0] for layer in build_model("cifar-basic-20").layers
                      if isinstance(layer, keras.layers.BatchNormalization))
    assert stats["params"] - stats["trainable_params"] == 2 * bn_channels


@pytest.mark.parametrize("arch, convs, blocks_, macs_m", [
    ("cifar-basic-110", 109, 54, 253), ("cifar-bottleneck-164", 166, 54, None),
    ("imagenet-50", 53, 16, 4089), ("imagenet-18", 20, 8, 1814)])
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
    assert blocks.side_head_index([3, 4, 23, 3]) == 16  # ImageNet-101: inside group 2


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
    shared = build_model("cifar-basic-14", share=True, weight_decay=0)
    untied = build_model("cifar-basic-14", share=False, weight_decay=0)
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
        return tape.gradient(loss, variables)

    for g in range(3):
        kernel_layer = shared.get_layer(f"group{g}_shared_conv3x3")
        uses = sum(1 for node in kernel_layer._inbound_nodes)
        assert uses == 2, "one kernel used by both units of the stage"
        assert sum(1 for w in shared.trainable_weights if w is kernel_layer.kernel) == 1
        (shared_grad,) = grads(shared, [kernel_layer.kernel])
        per_use = grads(untied, [untied.get_layer(f"group{g}_block{b}_conv2").kernel for b in range(2)])
        np.testing.assert_allclose(shared_grad.numpy(), per_use[0].numpy() + per_use[1].numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_weight_decay_is_half_l2_on_conv_and_fc_kernels_only():
    model = build_model("cifar-basic-8", gate="eps", weight_decay=2e-4)
    model(np.zeros((1, 32, 32, 3), np.float32))
    kernels = [w for layer in model.layers for w in layer.weights
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and w.name == "kernel"]
    expected = 2e-4 * 0.5 * sum(float(np.sum(np.square(w.numpy()))) for w in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_initialisers_he_fan_out_and_gaussian():
    he = build_model("cifar-basic-8").get_layer("group2_block0_conv2").kernel.numpy()
    fan_out = 3 * 3 * 64
    assert abs(he.std() / np.sqrt(2.0 / fan_out) - 1) < 0.1
    gauss = build_model("cifar-basic-8", init="gaussian").get_layer("group2_block0_conv2").kernel.numpy()
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
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss={"logits": loss, "side_logits": loss} if side else loss,
                  loss_weights={"logits": 1.0, "side_logits": 0.1} if side else None)
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, {"logits": y, "side_logits": y} if side else y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert changed > len(before) // 2
    logits = model.predict(x, verbose=0)
    logits = logits["logits"] if side else logits
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("arch, options", [
    ("cifar-basic-14", dict(gate="eps", epsilon=0.8, side_head=True, share=True)),
    ("cifar-basic-8", dict(gate="k", shortcut="exclusive_gating", gate_bias=-2.0)),
    ("mnist-plain-4", dict(gate="k")),
])
def test_gated_models_round_trip_through_dot_keras(tmp_path, arch, options):
    rng = np.random.default_rng(4)
    model = build_model(arch, **options)
    x = rng.normal(size=(3,) + tuple(model.input.shape[1:])).astype(np.float32)
    model(x, training=True)  # move BN statistics and the gate monitors off their initial values
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected, actual = model(x), loaded(x)
    for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(actual)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(L.gate_layers(model), L.gate_layers(loaded)):
        assert type(a) is type(b)
        if isinstance(a, L.EpsilonGate):
            assert float(b.epsilon.numpy()) == float(a.epsilon.numpy())
            assert float(b.discarded_ema.numpy()) == float(a.discarded_ema.numpy())


@pytest.mark.parametrize("order", blocks.ORDERS)
def test_he_et_al_unit_orders(order):
    rng = np.random.default_rng(5)
    model = build_model("cifar-basic-8", order=order)
    unit = model.get_layer("group0_block0_add")
    probe = keras.Model(model.input, [unit.input[0], model.get_layer("logits").input])
    residual, features = probe(rng.normal(size=(2, 32, 32, 3)).astype(np.float32))
    residual_layer = unit.input[0]._keras_history.operation
    if order in ("original", "relu_preact"):
        assert isinstance(residual_layer, keras.layers.BatchNormalization)
    elif order == "relu_before_add":
        assert isinstance(residual_layer, keras.layers.ReLU)
        assert residual.numpy().min() >= 0
    else:  # full pre-activation and BN-after-addition end the residual in a conv
        assert isinstance(residual_layer, keras.layers.Conv2D)
    if order == "bn_after_add":
        assert "group0_block0_out_bn" in [layer.name for layer in model.layers]
    assert features.shape == (2, 64)


def test_constant_scaling_halves_both_branches():
    rng = np.random.default_rng(6)
    model = build_model("cifar-basic-8", shortcut="constant_scaling")
    add = model.get_layer("group0_block0_add")
    conv2 = model.get_layer("group0_block0_conv2")
    probe = keras.Model(model.input, [conv2.output, model.get_layer("stem_relu").output, add.output])
    f, x, out = (t.numpy() for t in probe(rng.normal(size=(2, 32, 32, 3)).astype(np.float32)))
    np.testing.assert_allclose(out, 0.5 * f + 0.5 * x, rtol=1e-5, atol=1e-6)


def test_channels_first_model_agrees_with_channels_last():
    rng = np.random.default_rng(7)
    last = build_model("cifar-basic-8", gate="eps", epsilon=0.1)
    first = build_model("cifar-basic-8", gate="eps", epsilon=0.1, data_format="channels_first")
    for layer in last.layers:
        if layer.weights:
            first.get_layer(layer.name).set_weights(layer.get_weights())
    convs = [layer for layer in first.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.data_format == "channels_first" for layer in convs)
    assert all(layer.axis in (1, [1]) for layer in first.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    assert first.get_layer("group2_block0_add").output.shape == (None, 64, 8, 8)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    try:
        out_first = first(x).numpy()
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as err:
        pytest.skip(f"this TensorFlow build has no NCHW convolution on CPU: {str(err)[:80]}")
    np.testing.assert_allclose(out_first, last(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, fragment", [
    ("cifar-basic-111", "6n+2"), ("imagenet-77", "18, 34, 50, 101, 152, 200"),
    ("wrn-41-4", "6n+4"), ("mnist-res-5", "even"), ("resnet-50", "valid are")])
def test_invalid_names_are_one_line_errors_listing_what_is_valid(name, fragment):
    with pytest.raises(UserError) as err:
        resolve(name)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_invalid_options_are_user_errors():
    for options in (dict(gate="maybe"), dict(epsilon=-1.0), dict(order="sideways"),
                    dict(data_format="nchw")):
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
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)  # two steps
    for gate in L.gate_layers(model):
        np.testing.assert_allclose(gate.discarded_ema.numpy(), 1 - 0.95 ** 2, rtol=1e-5)
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
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss={"logits": loss, "side_logits": loss})
        x = np.random.default_rng(9).normal(size=(4, 32, 32, 3)).astype(np.float32)
        y = np.arange(4)
        history = model.fit(x, {"logits": y, "side_logits": y}, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("arch, counts, removed, transition", [
    ("cifar-basic-20", [2, 3, 1], (1,), "group1_transition_shortcut_pool_pad"),
    ("cifar-bottleneck-20", [1, 2, 2], (0,), "group0_transition_shortcut_conv"),
    ("imagenet-18", [2, 1, 0, 2], (1, 2), "group2_transition_shortcut_conv"),
    ("wrn-16-2", [2, 1, 2], (1,), "group1_transition_preact_bn"),
])
def test_reduced_layouts_keep_the_transition_where_a_first_unit_went(arch, counts, removed, transition):
    model = build_model(arch, blocks_per_group=counts, first_removed=removed, share=True,
                        classes=10, input_shape=(32, 32, 3))
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
