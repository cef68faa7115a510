"""TF1Momentum: TF1's `MomentumOptimizer` accumulator form, checked step by step against the
formula computed here in float64, against Keras's SGD (equal while lr is constant, different
after an lr change), and its plumbing: serialisation, slots in `variables`, mixed precision,
MirroredStrategy, and `make_optimizer`'s names."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from epsresnet_tf.errors import UserError  # noqa: E402
from epsresnet_tf.train.optimizers import TF1Momentum  # noqa: E402

#: lr per step: constant, then a drop like the schedule's, then a reset back to 0.1.
LRS = [0.1, 0.1, 0.1, 0.001, 0.001, 0.1, 0.1, 0.1]
W0 = np.array([1.0, -2.0, 0.5], dtype=np.float64)
#: fixed gradients, one per step (not a function of w, so the formulas stay closed-form)
GRADS = [np.array([0.3, -0.1, 0.2]) * (1 + 0.25 * i) * (-1) ** (i // 3) for i in range(len(LRS))]
M = 0.9


def tf1_reference(nesterov=False):
    """TF1 ApplyMomentum in float64: accum ← m·accum + g; w ← w − lr·accum
    (Nesterov: w ← w − lr·(g + m·accum)). The weights after each step."""
    w, accum, out = W0.copy(), np.zeros_like(W0), []
    for lr, g in zip(LRS, GRADS):
        accum = M * accum + g
        w = w - lr * ((g + M * accum) if nesterov else accum)
        out.append(w.copy())
    return out


def keras_reference():
    """Keras SGD in float64: v ← m·v − lr·g; w ← w + v."""
    w, v, out = W0.copy(), np.zeros_like(W0), []
    for lr, g in zip(LRS, GRADS):
        v = M * v - lr * g
        w = w + v
        out.append(w.copy())
    return out


def run_optimizer(opt):
    """Apply the fixed gradients with the lr of each step; the weights after each step."""
    var = keras.Variable(W0.astype(np.float32), name="w")
    opt.build([var])
    out = []
    for lr, g in zip(LRS, GRADS):
        opt.learning_rate.assign(lr)
        opt.apply([keras.ops.convert_to_tensor(g.astype(np.float32))], [var])
        out.append(np.asarray(var.numpy(), dtype=np.float64))
    return out


def test_tf1_momentum_matches_formula_through_lr_drop_and_reset():
    got = run_optimizer(TF1Momentum(0.1, momentum=M))
    want = tf1_reference()
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    # the sequence really moves, and the reset (step 5) moves it by lr·accum at once
    assert np.max(np.abs(want[5] - want[4])) > 0.05


def test_keras_sgd_agrees_before_lr_change_and_differs_after():
    tf1 = run_optimizer(TF1Momentum(0.1, momentum=M))
    ks = run_optimizer(keras.optimizers.SGD(0.1, momentum=M))
    # our float64 model of Keras's SGD is right (so the comparison is of the two rules)
    for a, b in zip(ks, keras_reference()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for step in range(3):  # lr constant at 0.1: the two forms agree
        np.testing.assert_allclose(tf1[step], ks[step], rtol=1e-5, atol=1e-6)
    # after the drop to 0.001 and after the reset back to 0.1 they differ measurably
    assert np.max(np.abs(tf1[3] - ks[3])) > 1e-2
    assert np.max(np.abs(tf1[5] - ks[5])) > 1e-2
    # the step right after the reset: TF1 rescales the whole accumulator by the new lr, so it
    # takes a much larger step than Keras, whose velocity was built up at lr 0.001
    tf1_jump = np.max(np.abs(tf1[5] - tf1[4]))
    ks_jump = np.max(np.abs(ks[5] - ks[4]))
    assert tf1_jump > 2 * ks_jump


def test_tf1_nesterov_matches_formula():
    got = run_optimizer(TF1Momentum(0.1, momentum=M, nesterov=True))
    want = tf1_reference(nesterov=True)
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    # and it is not the plain form
    assert np.max(np.abs(want[-1] - tf1_reference()[-1])) > 1e-2


def test_config_round_trip_keeps_momentum_and_nesterov():
    opt = TF1Momentum(0.05, momentum=0.8, nesterov=True)
    config = opt.get_config()
    assert (config["momentum"], config["nesterov"]) == (0.8, True)
    again = TF1Momentum.from_config(config)
    assert (again.momentum, again.nesterov) == (0.8, True)
    assert float(again.learning_rate) == pytest.approx(0.05)
    # through Keras's registry, by its registered name, as a .keras file would store it
    blob = json.loads(json.dumps(keras.optimizers.serialize(opt)))
    assert blob["registered_name"] == "epsresnet_tf>TF1Momentum"
    restored = keras.optimizers.deserialize(blob)
    assert isinstance(restored, TF1Momentum)
    assert (restored.momentum, restored.nesterov) == (0.8, True)


def test_keras_file_round_trip_of_compiled_model(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=TF1Momentum(0.1, momentum=0.7, nesterov=True), loss="mse")
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, TF1Momentum)
    assert (loaded.optimizer.momentum, loaded.optimizer.nesterov) == (0.7, True)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_slots_are_in_optimizer_variables():
    a = keras.Variable(np.zeros((2, 3), np.float32), name="a")
    b = keras.Variable(np.zeros((4,), np.float32), name="b")
    opt = TF1Momentum(0.1)
    opt.build([a, b])
    ids = {id(v) for v in opt.variables}
    assert len(opt.accumulators) == 2
    assert all(id(s) in ids for s in opt.accumulators)
    assert [tuple(s.shape) for s in opt.accumulators] == [(2, 3), (4,)]
    # the slot holds the accumulated gradients (TF1's accum, not Keras's −lr-scaled velocity)
    opt.apply([np.ones((2, 3), np.float32), np.full((4,), 2.0, np.float32)], [a, b])
    np.testing.assert_allclose(np.asarray(opt.accumulators[1]), 2.0)


def test_under_loss_scale_optimizer_slots_visible_and_update_right():
    """Mixed precision: Keras wraps the optimizer in a LossScaleOptimizer."""
    var = keras.Variable(W0.astype(np.float32), name="w")
    opt = keras.optimizers.LossScaleOptimizer(TF1Momentum(0.1, momentum=M))
    opt.build([var])
    ids = {id(v) for v in opt.variables}
    assert all(id(s) in ids for s in opt.inner_optimizer.accumulators)
    scale = float(np.asarray(opt.dynamic_scale))
    opt.apply([keras.ops.convert_to_tensor((GRADS[0] * scale).astype(np.float32))], [var])
    np.testing.assert_allclose(var.numpy(), tf1_reference()[0], rtol=1e-5, atol=1e-6)


MIRRORED = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from epsresnet_tf.train.optimizers import TF1Momentum
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    var = keras.Variable(np.array([1.0, -2.0], np.float32))
    opt = TF1Momentum(0.1, momentum=0.9)
    opt.build([var])

@tf.function
def step(g):
    def replica_fn():
        # each replica contributes half of g: the all-reduced (summed) gradient is g
        opt.apply([g / 2.0], [var])
    strategy.run(replica_fn)

out = []
for lr, g in [(0.1, [0.3, -0.1]), (0.1, [0.2, 0.4]), (0.001, [0.1, 0.1]), (0.1, [-0.2, 0.3])]:
    opt.learning_rate.assign(lr)
    step(np.array(g, np.float32))
    out.append(var.numpy().tolist())
print("RESULT " + json.dumps({"w": out, "replicas": strategy.num_replicas_in_sync,
                              "nvars": len(opt.variables)}))
"""


def test_mirrored_strategy_two_cpus_matches_formula():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[0][len("RESULT ") :])
    assert res["replicas"] == 2
    assert res["nvars"] == 3  # iterations, learning_rate, one accumulator
    w, accum = np.array([1.0, -2.0]), np.zeros(2)
    for got, (lr, g) in zip(
        res["w"], [(0.1, [0.3, -0.1]), (0.1, [0.2, 0.4]), (0.001, [0.1, 0.1]), (0.1, [-0.2, 0.3])]
    ):
        accum = 0.9 * accum + np.array(g)
        w = w - lr * accum
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def _cfg(name):
    from epsresnet_tf.runconfig import ScheduleSection

    return ScheduleSection(optimizer=name, momentum=0.9, lr_schedule=[[0, 0.1], [82, 0.01]])


@pytest.mark.parametrize(
    "name, cls, nesterov",
    [
        ("momentum", TF1Momentum, False),
        ("nesterov", TF1Momentum, True),
        ("keras-sgd", keras.optimizers.SGD, False),
        ("keras-nesterov", keras.optimizers.SGD, True),
    ],
)
def test_make_optimizer_names(name, cls, nesterov):
    from epsresnet_tf.train.optimizers import make_optimizer

    opt = make_optimizer(_cfg(name))
    assert type(opt) is cls
    assert opt.nesterov is nesterov
    assert opt.momentum == pytest.approx(0.9)
    assert float(opt.learning_rate) == pytest.approx(0.1)


def test_make_optimizer_and_validate_config_reject_unknown_name():
    from epsresnet_tf.config import DEFAULTS, OPTIMIZERS, validate_config
    from epsresnet_tf.train.optimizers import make_optimizer

    assert set(OPTIMIZERS) == {"momentum", "nesterov", "keras-sgd", "keras-nesterov", "nadam"}
    with pytest.raises(UserError) as err:
        make_optimizer(_cfg("sgd"))
    assert all(n in str(err.value) for n in OPTIMIZERS) and "'sgd'" in str(err.value)
    with pytest.raises(UserError) as err:
        validate_config(dict(DEFAULTS, optimizer="adam"))
    assert all(n in str(err.value) for n in OPTIMIZERS) and "\n" not in str(err.value)


def test_recipes_use_the_tf1_forms():
    """Every SGD recipe names (or defaults to) "momentum"/"nesterov", i.e. TF1's form."""
    from epsresnet_tf import recipes
    from epsresnet_tf.config import DEFAULTS

    assert DEFAULTS["optimizer"] == "momentum"
    loaded = {n: recipes.load(n) for n in recipes.available()}  # with their bases' keys
    names = {r.get("optimizer", DEFAULTS["optimizer"]) for r in loaded.values()}
    assert names and names <= {"momentum", "nesterov", "nadam"}, names
    inet = [r for n, r in loaded.items() if n.startswith("imagenet-")]
    assert inet and all(r["optimizer"] == "nesterov" for r in inet)
