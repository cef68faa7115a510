"""The gates against their definitions (docs/semantics.md §1, §3) and He et al.'s shortcut variants."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _reference import tensorpack_ema

from epsresnet_tf import layers as L

SHARPNESS = 1e6


def reference_gate(f, eps, scope):
    """docs/semantics.md §1 written directly in numpy: s = max(relu(F-eps) + relu(-F-eps)),
    T = relu(1 - L relu(1 - L s))."""
    f = f.astype(np.float32)
    relu = lambda v: np.maximum(v, np.float32(0))  # noqa: E731
    s = relu(f - np.float32(eps)) + relu(-f - np.float32(eps))
    if scope == "batch":
        s = s.max()
    else:
        s = s.reshape(len(f), -1).max(axis=1).reshape((-1,) + (1,) * (f.ndim - 1))
    one = np.float32(1)
    return relu(one - np.float32(SHARPNESS) * relu(one - np.float32(SHARPNESS) * s))


def around_eps(rng, shape, eps, spread=0.02):
    """Entries with |F| close to eps on both sides and both signs."""
    magnitude = eps * (1 + rng.uniform(-spread, spread, size=shape))
    return (magnitude * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)


@pytest.mark.parametrize("scope", ["batch", "sample"])
def test_epsilon_gate_matches_the_formula(scope):
    rng = np.random.default_rng(0)
    eps = 2.5
    gate = L.EpsilonGate(eps, scope=scope)
    seen = set()
    for trial in range(20):
        f = around_eps(rng, (4, 3, 3, 2), eps, spread=0.02 if trial % 2 else 0.003)
        if trial % 3 == 0:  # a batch whose entries all sit inside the band
            f = np.clip(f, -eps, eps)
        expected_t = reference_gate(f, eps, scope)
        out = gate(tf.constant(f)).numpy()
        np.testing.assert_array_equal(out, expected_t * f)
        seen.update(np.unique(expected_t).tolist())
    assert {0.0, 1.0} <= seen, "the random draws must exercise both T = 0 and T = 1"


def test_sample_scope_gates_each_image_on_its_own():
    eps = 1.0
    f = np.zeros((3, 2, 2, 1), np.float32)
    f[0, 0, 0, 0] = 1.5  # exceeds eps → T = 1 for image 0 only
    f[1] = 0.9  # inside the band → T = 0
    f[2, 1, 1, 0] = -1.2  # exceeds on the negative side → T = 1
    out = L.EpsilonGate(eps, scope="sample")(tf.constant(f)).numpy()
    np.testing.assert_array_equal(out[0], f[0])
    np.testing.assert_array_equal(out[1], np.zeros_like(f[1]))
    np.testing.assert_array_equal(out[2], f[2])
    batch_out = L.EpsilonGate(eps, scope="batch")(tf.constant(f)).numpy()
    np.testing.assert_array_equal(batch_out, f)  # one image over the band opens the whole batch


def test_threshold_sits_within_one_over_l():
    gate = L.EpsilonGate(0.5)
    gate.build((1, 4))
    below = np.full((1, 4), 0.5, np.float32)
    above = below.copy()
    above[0, 1] = 0.5 + 2e-6  # exceeds eps by more than 1/L
    assert gate.gate(tf.constant(below)).numpy() == 0.0
    assert gate.gate(tf.constant(above)).numpy() == 1.0


@pytest.mark.parametrize("scope", ["batch", "sample"])
def test_gradient_with_respect_to_f_is_t(scope):
    rng = np.random.default_rng(1)
    gate = L.EpsilonGate(1.0, scope=scope)
    seen = set()
    for trial in range(6):
        f = around_eps(rng, (3, 4, 4, 2), 1.0, spread=0.01)
        inside = {1: 3, 3: 1, 5: 3}.get(trial, 0)  # how many images lie inside the band
        f[:inside] = np.clip(f[:inside], -1.0, 1.0)  # all: T = 0; some: T = 0 for those (sample)
        f = tf.constant(f)
        upstream = tf.constant(rng.normal(size=(3, 4, 4, 2)).astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = gate(f)
            objective = tf.reduce_sum(out * upstream)
        grad = tape.gradient(objective, f).numpy()
        t = np.broadcast_to(reference_gate(f.numpy(), 1.0, scope), f.shape)
        np.testing.assert_array_equal(grad, t * upstream.numpy())
        seen.update(np.unique(t).tolist())
    assert seen == {0.0, 1.0}, "both T = 0 (zero gradient) and T = 1 (identity) must be exercised"


def test_epsilon_is_a_non_trainable_variable_that_can_change():
    gate = L.EpsilonGate(0.0)
    f = tf.constant(np.full((2, 3), 0.4, np.float32))
    assert np.array_equal(gate(f).numpy(), f.numpy())  # eps = 0: a plain residual, T = 1
    assert [w.name for w in gate.trainable_weights] == []
    gate.epsilon.assign(0.5)
    assert np.array_equal(gate(f).numpy(), np.zeros((2, 3), np.float32))


def test_monitors_update_in_training_only():
    gate = L.EpsilonGate(1.0)
    closed = tf.constant(np.full((2, 2), 0.5, np.float32))
    gate(closed, training=False)
    assert float(gate.discarded_ema.numpy()) == 0.0
    assert float(gate.response_max.numpy()) == 0.0
    gate(closed, training=True)
    # tensorpack's EMA from 0: at step 0 the decay in effect is min(0.95, 1/10) = 0.1
    np.testing.assert_allclose(gate.discarded_ema.numpy(), 0.9, rtol=1e-6)
    assert float(gate.gate_value.numpy()) == 0.0
    np.testing.assert_allclose(gate.response_max.numpy(), 0.9 * 0.5, rtol=1e-6)
    opened = tf.constant(np.array([[3.0, -1.0], [0.0, 1.0]], np.float32))
    gate(opened, training=True)
    np.testing.assert_allclose(gate.discarded_ema.numpy(), ema([1.0, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(gate.discarded_ema.numpy(), 0.9 * 2 / 11, rtol=1e-6)
    assert float(gate.gate_value.numpy()) == 1.0
    assert float(gate.monitor_steps.numpy()) == 2.0


def ema(values, decay=0.95):
    """tensorpack's moving summary after these steps (from step 0), recomputed."""
    return float(tensorpack_ema(list(values), decay=decay)[-1])


@pytest.mark.parametrize("scope, group", [("batch", None), ("sample", None), ("batch", 2)])
def test_response_monitors_are_moving_averages_as_the_authors_had(scope, group):
    # docs/semantics.md §8: max |F| and mean |F| are tensorpack moving summaries (decay 0.95), not the
    # last batch's values; 1 - T too (averaged over groups or images).
    rng = np.random.default_rng(11)
    gate = L.EpsilonGate(1.0, scope=scope, group_size=group)
    step = tf.function(lambda f: gate(f, training=True))
    batches = [
        rng.normal(0, s, size=(4, 3, 3, 2)).astype(np.float32) for s in (0.1, 2.0, 0.2, 3.0, 0.3)
    ]
    for f in batches:
        step(tf.constant(f))
    if group:  # the mean over groups of each group's max |F|, as replicas of G images
        top = [np.abs(f).reshape(-1, group * 18).max(axis=1).mean() for f in batches]
    else:
        top = [np.abs(f).max() for f in batches]
    np.testing.assert_allclose(gate.response_max.numpy(), ema(top), rtol=1e-5)
    np.testing.assert_allclose(
        gate.response_mean.numpy(), ema(np.abs(f).mean() for f in batches), rtol=1e-5
    )
    t = [reference_gate(f, 1.0, "sample").ravel() for f in batches]  # T per image
    if scope == "batch" and group is None:
        t = [x.max(keepdims=True) for x in t]
    elif group:
        t = [x.reshape(-1, group).max(axis=1) for x in t]
    np.testing.assert_allclose(gate.discarded_ema.numpy(), ema(1 - x.mean() for x in t), rtol=1e-5)
    assert 0 < gate.discarded_ema.numpy() < ema([1] * len(batches))  # some open, some closed


def test_gate_groups_each_get_their_own_t():
    # G = 2 on a batch of 4: images 0-1 have every |F| <= eps, images 2-3 do not.
    rng = np.random.default_rng(12)
    eps = 1.0
    f = rng.uniform(-eps, eps, size=(4, 3, 3, 2)).astype(np.float32)
    f[2, 0, 0, 0] = 1.5
    f[3] *= 3.0
    gate = L.EpsilonGate(eps, group_size=2)
    gate.build(f.shape)
    np.testing.assert_array_equal(gate.gate(tf.constant(f)).numpy(), [0.0, 1.0])
    x = tf.constant(f)
    upstream = tf.constant(rng.normal(size=f.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = gate(x, training=True)
        objective = tf.reduce_sum(out * upstream)
    out = out.numpy()
    np.testing.assert_array_equal(out[:2], np.zeros_like(f[:2]))
    np.testing.assert_array_equal(out[2:], f[2:])
    grad = tape.gradient(objective, x).numpy()  # dS/dF = T of the image's group
    np.testing.assert_array_equal(grad[:2], np.zeros_like(f[:2]))
    np.testing.assert_array_equal(grad[2:], upstream.numpy()[2:])
    # one T for the whole batch opens it; with groups the monitors average over groups
    np.testing.assert_array_equal(L.EpsilonGate(eps)(x).numpy(), f)
    assert float(gate.gate_value.numpy()) == 0.5
    np.testing.assert_allclose(gate.discarded_ema.numpy(), 0.9 * 0.5, rtol=1e-6)
    group_max = np.abs(f).reshape(2, -1).max(axis=1)
    np.testing.assert_allclose(gate.response_max.numpy(), 0.9 * group_max.mean(), rtol=1e-6)
    # a partial last group (evaluation) is a group of its own; swapped halves swap T
    np.testing.assert_array_equal(gate(x[:3]).numpy(), np.concatenate([0 * f[:2], f[2:3]]))
    swapped = tf.concat([x[2:], x[:2]], 0)
    np.testing.assert_array_equal(gate(swapped).numpy(), np.concatenate([f[2:], 0 * f[:2]]))
    # in a functional model (symbolic batch), under tf.function, and after serialisation
    inputs = keras.Input((3, 3, 2))
    model = keras.Model(inputs, L.EpsilonGate(eps, group_size=2)(inputs))
    np.testing.assert_array_equal(tf.function(model)(x).numpy(), out)
    clone = keras.layers.deserialize(keras.layers.serialize(gate))
    assert isinstance(clone, L.EpsilonGate) and clone.group_size == 2
    np.testing.assert_array_equal(clone(x).numpy(), out)
    with pytest.raises(ValueError, match="group_size"):
        L.EpsilonGate(eps, group_size=0)


def test_sample_scope_ignores_groups():
    rng = np.random.default_rng(13)
    f = tf.constant(around_eps(rng, (4, 2, 2, 3), 1.0))
    np.testing.assert_array_equal(
        L.EpsilonGate(1.0, "sample", group_size=2)(f).numpy(),
        L.EpsilonGate(1.0, "sample")(f).numpy(),
    )


def test_gate_computes_in_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        gate = L.EpsilonGate(1.0)
        # 1.0004 is representable in float32 but rounds to 1.0 in float16: the gate must
        # see the float16 input exactly as given, cast up, not a float16 epsilon.
        f16 = tf.constant(np.array([[1.0, 0.25], [1.001, -0.5]], np.float16))
        out = gate(f16)
        assert out.dtype == tf.float16
        assert gate.epsilon.dtype == "float32"
        expected = reference_gate(f16.numpy().astype(np.float32), 1.0, "batch") * f16.numpy()
        np.testing.assert_array_equal(out.numpy(), expected.astype(np.float16))
    finally:
        keras.config.set_dtype_policy(previous)


def test_residual_gate_follows_its_definition():
    rng = np.random.default_rng(2)
    f = tf.constant(rng.normal(size=(2, 5)).astype(np.float32))
    x = tf.constant(rng.normal(size=(2, 5)).astype(np.float32))
    residual = L.ResidualGate("residual")
    plain = L.ResidualGate("plain")
    np.testing.assert_allclose(residual([f, x]).numpy(), f.numpy() + x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(plain([f, x]).numpy(), f.numpy(), rtol=1e-6)  # k = 1
    for k in (2.0, 0.3):
        residual.k.assign(k)
        plain.k.assign(k)
        np.testing.assert_allclose(residual([f, x]).numpy(), k * f.numpy() + x.numpy(), rtol=1e-6)
        np.testing.assert_allclose(
            plain([f, x]).numpy(), k * f.numpy() + (1 - k) * x.numpy(), rtol=1e-5
        )
    for k in (0.0, -0.7):  # g(k) = relu(k) = 0: the identity, exactly
        residual.k.assign(k)
        plain.k.assign(k)
        assert np.array_equal(residual([f, x]).numpy(), x.numpy())
        assert np.array_equal(plain([f, x]).numpy(), x.numpy())


def test_k_decay_is_off_by_default_and_l2_when_asked():
    f = tf.zeros((1, 3))
    free = L.ResidualGate()
    free([f, f])
    assert free.losses == []
    decayed = L.ResidualGate(k_decay=0.01)
    decayed([f, f])
    decayed.k.assign(3.0)
    np.testing.assert_allclose(float(sum(decayed.losses)), 0.01 * 9.0, rtol=1e-6)


def test_pool_pad_shortcut_is_pool_then_symmetric_zero_channels():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 4, 16)).astype(np.float32)
    out = L.PoolPadShortcut(32, 2)(tf.constant(x)).numpy()
    pooled = x.reshape(2, 2, 2, 2, 2, 16).mean(axis=(2, 4))
    assert out.shape == (2, 2, 2, 32)
    np.testing.assert_allclose(out[..., 8:24], pooled, rtol=1e-6)
    assert not out[..., :8].any() and not out[..., 24:].any()


@pytest.mark.parametrize(
    "mode, bias, expect",
    [
        ("exclusive", -60.0, "x"),
        ("exclusive", 60.0, "f"),
        ("shortcut_only", -60.0, "f+x"),
        ("shortcut_only", 60.0, "f"),
    ],
)
def test_sigmoid_shortcut_gate_saturates_as_he_et_al_describe(mode, bias, expect):
    rng = np.random.default_rng(4)
    f = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    gate = L.SigmoidShortcutGate(mode, bias_init=bias, kernel_initializer="zeros")
    out = gate([tf.constant(f), tf.constant(x)]).numpy()
    expected = {"x": x, "f": f, "f+x": f + x}[expect]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1])
def test_fused_batchnorm_trains_like_keras_batchnorm(axis):
    # the fused kernel is a speed-up only: outputs, gradients and moving statistics equal
    # Keras BN's
    rng = np.random.default_rng(7)
    x = tf.constant(
        rng.normal(1.5, 2.0, size=(4, 5, 6, 3) if axis == -1 else (4, 3, 5, 6)), tf.float32
    )
    fused, plain = (
        L.FusedBatchNormalization(axis=axis, momentum=0.9),
        keras.layers.BatchNormalization(axis=axis, momentum=0.9),
    )
    fused.build(x.shape)
    plain.build(x.shape)
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    for layer in (fused, plain):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    upstream = tf.constant(rng.normal(size=x.shape), tf.float32)
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            objective = tf.reduce_sum(y * upstream)
        grads = tape.gradient(objective, [x, layer.gamma, layer.beta])
        results.append([y.numpy()] + [g.numpy() for g in grads])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5
    )
    assert not np.allclose(fused.moving_variance.numpy(), 1.0)  # the statistics did move
    # inference is Keras's own path, on the moving statistics
    np.testing.assert_allclose(
        fused(x, training=False).numpy(),
        keras.layers.BatchNormalization.call(fused, x, training=False).numpy(),
    )
    assert isinstance(
        keras.layers.deserialize(keras.layers.serialize(fused)), L.FusedBatchNormalization
    )


@pytest.mark.parametrize("shape, axis", [((6, 5, 4, 3), -1), ((6, 3, 5, 4), 1), ((6, 3), -1)])
def test_ghost_batchnorm_is_keras_batchnorm_per_group(shape, axis):
    # group_size 2 on 6 images: each group of 2 normalised with its own statistics, as
    # Keras BN (training) on that group alone; gradients as for the three groups through
    # one shared layer; the moving statistics move by the mean over groups.
    rng = np.random.default_rng(8)
    x = tf.constant(
        rng.normal(0.5, 2.0, size=shape)
        * rng.uniform(0.2, 3.0, size=shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)),
        tf.float32,
    )
    ghost = L.FusedBatchNormalization(axis=axis, momentum=0.9, group_size=2)
    shared = keras.layers.BatchNormalization(axis=axis, momentum=0.9)
    alone = [keras.layers.BatchNormalization(axis=axis, momentum=0.9) for _ in range(3)]
    gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    for layer in [ghost, shared] + alone:
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    upstream = tf.constant(rng.normal(size=shape), tf.float32)
    results = []
    for layer in (ghost, shared):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if layer is ghost:
                y = ghost(x, training=True)
            else:
                y = tf.concat([shared(x[i : i + 2], training=True) for i in (0, 2, 4)], 0)
            objective = tf.reduce_sum(y * upstream)
        grads = tape.gradient(objective, [x, layer.gamma, layer.beta])
        results.append([y.numpy()] + [g.numpy() for g in grads])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    for i, layer in enumerate(alone):
        np.testing.assert_allclose(
            layer(x[2 * i : 2 * i + 2], training=True).numpy(),
            results[0][0][2 * i : 2 * i + 2],
            rtol=1e-4,
            atol=2e-5,
        )
    for stat in ("moving_mean", "moving_variance"):
        expected = np.mean([getattr(layer, stat).numpy() for layer in alone], axis=0)
        np.testing.assert_allclose(getattr(ghost, stat).numpy(), expected, rtol=1e-5)
    # not the whole batch's statistics: grouping changed the output
    whole = keras.layers.BatchNormalization(axis=axis)
    whole.build(x.shape)
    whole.gamma.assign(gamma)
    whole.beta.assign(beta)
    assert np.abs(whole(x, training=True).numpy() - results[0][0]).max() > 0.1
    # inference is Keras's own path on the moving statistics; the config keeps the group
    np.testing.assert_allclose(
        ghost(x, training=False).numpy(),
        keras.layers.BatchNormalization.call(ghost, x, training=False).numpy(),
    )
    clone = keras.layers.deserialize(keras.layers.serialize(ghost))
    assert isinstance(clone, L.FusedBatchNormalization) and clone.group_size == 2


def test_ghost_batchnorm_of_one_group_is_the_fused_batchnorm():
    rng = np.random.default_rng(9)
    x = tf.constant(rng.normal(size=(4, 3, 3, 5)), tf.float32)
    ghost, plain = L.FusedBatchNormalization(group_size=4), L.FusedBatchNormalization()
    for layer in (ghost, plain):
        layer.build(x.shape)
    np.testing.assert_allclose(
        ghost(x, training=True).numpy(), plain(x, training=True).numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        ghost.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-6
    )


@pytest.mark.parametrize("mode", ["exclusive", "shortcut_only"])
def test_sigmoid_shortcut_gate_is_he_et_al_formula(mode):
    # g(x) = sigmoid(W_g x + b_g) by a 1x1 conv of the shortcut input x (He et al. §3.1);
    # exclusive: g F + (1 - g) x; shortcut-only: F + (1 - g) x.
    rng = np.random.default_rng(5)
    f = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    gate = L.SigmoidShortcutGate(mode, bias_init=-6.0)
    gate([tf.constant(f), tf.constant(x)])
    np.testing.assert_array_equal(gate.gate_conv.bias.numpy(), np.full(4, -6.0, np.float32))
    w = rng.normal(size=(1, 1, 4, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    gate.gate_conv.set_weights([w, bias])
    g = 1 / (1 + np.exp(-(np.einsum("nhwc,cd->nhwd", x, w[0, 0]) + bias)))
    expected = g * f + (1 - g) * x if mode == "exclusive" else f + (1 - g) * x
    assert 0.05 < g.mean() < 0.95 and g.std() > 0.05  # a gate that really mixes
    out = gate([tf.constant(f), tf.constant(x)]).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
