"""A gate kind added through the registry alone: a test-only "scale" gate u = s·F + x with
one trainable scalar s, discarded when s == 0. Nothing in the package names it: the
registry entry below is all it takes to build, train, monitor, certify and compress it."""

import keras
import numpy as np
import pytest
from _sources import Synthetic
from keras import ops

from epsresnet_tf import compress as C
from epsresnet_tf import gates as G
from epsresnet_tf import layers as L
from epsresnet_tf.config import resolve_config
from epsresnet_tf.models import build_model
from epsresnet_tf.train.loop import run_training


@keras.saving.register_keras_serializable(package="epsresnet_tf_tests")
class ScaleGate(L.GateLayer):
    """u = s·F + x on a pair [F, x]; s starts at 1."""

    def build(self, input_shape):
        self.s = self.add_weight(
            name="s",
            shape=(),
            dtype="float32",
            trainable=True,
            initializer=keras.initializers.Constant(1.0),
            autocast=False,
        )
        self.discarded_ema = L.monitor_weight(self, "discarded_ema", 0.0)
        self.monitor_steps = L.monitor_weight(self, "monitor_steps", 0.0)

    def call(self, inputs, training=None):
        residual, shortcut = inputs
        if training:
            steps = ops.convert_to_tensor(self.monitor_steps)
            L.moving_average(self.discarded_ema, ops.cast(ops.equal(self.s, 0.0), "float32"), steps)
            self.monitor_steps.assign(steps + 1.0)
        return ops.cast(self.s, residual.dtype) * residual + shortcut

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class ScaleKind(G.ScalarGateKind):
    name = "scale"
    label = "scale"
    layer = ScaleGate
    suffix = "scale_gate"
    formula = "s F + x"
    factor_name = "s"

    def make_layer(self, config, name):
        return ScaleGate(name=name)

    def factor_tensor(self, layer):
        return ops.convert_to_tensor(layer.s)

    def monitor(self, layer):
        return {"s": G.to_float(layer.s)}


@pytest.fixture
def scale_kind():
    G.register_gate(ScaleKind)
    yield G.get_gate("scale")
    G.unregister_gate("scale")


def test_registry_lists_builtin_kinds_and_refuses_unknown():
    assert G.gate_kinds()[:2] == ("eps", "k")
    none = G.get_gate("none")
    assert not none.gated and none.settings == {} and none.hyper_parameters == ()
    with pytest.raises(ValueError, match="gate must be one of none, eps, k"):
        G.get_gate("nope")


def test_a_new_kind_trains_certifies_and_compresses(scale_kind, tmp_path):
    from epsresnet_tf import blocks

    assert "scale" in blocks.GATES
    cfg = resolve_config(
        {
            "arch": "cifar-basic-8",
            "gate": "scale",
            "epochs": 1,
            "batch_size": 4,
            "val_steps": 0,
            "histogram_every": 0,
            "side_head": False,
        }
    )
    result = run_training(
        cfg, tmp_path / "run", sources=(Synthetic(batch=4, num_batches=2), None), verbose=0
    )
    assert result["status"] == "done"
    row = result["history"][-1]
    assert set(row["blocks"]) == {f"group{g}/block{b}" for g in range(3) for b in range(1)}
    assert all(set(e) == {"discarded", "s"} for e in row["blocks"].values())
    assert "epsilon" not in row  # no ε column: the kind has no such hyper-parameter

    net = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False)
    gates = G.gate_by_block(net)
    assert all(G.kind_of(g) is scale_kind for g in gates.values())
    gates["group1/block0"].s.assign(0.0)  # closed: adds exactly 0
    gates["group2/block0"].s.assign(0.75)

    cert = C.certify(net, {})
    assert cert.closed == ["group1/block0"]
    assert cert.blocks["group2/block0"].as_dict()["kind"] == "scale"
    opts = {"classes": 10, "input_shape": (8, 8, 3), "gate": "scale"}
    reduced, info = C.reduce(net, "cifar-basic-8", opts, cert.closed, certificate=cert)
    assert info["removed"] == ["group1/block0"]
    assert info["reduced_gates"] == "none"  # every kept s folded into its last conv
    assert info["folded_k"] == ["group0/block0", "group2/block0"]
    assert not L.gate_layers(reduced)
    x = np.random.default_rng(1).normal(size=(6, 8, 8, 3)).astype(np.float32)
    check = C.check_equivalence(net, reduced, [x])
    assert check["passed"], check
    np.testing.assert_allclose(np.asarray(reduced(x)), np.asarray(net(x)), atol=1e-5)


def test_a_merging_kind_refuses_merging_shortcuts(scale_kind):
    with pytest.raises(ValueError, match="merges the branches itself"):
        build_model("cifar-basic-8", gate="scale", shortcut="constant_scaling")


def test_a_kind_without_its_required_methods_cannot_register():
    class Unfinished(G.ScalarGateKind):  # no make_layer, no factor_tensor
        name = "unfinished"

    with pytest.raises(TypeError, match="abstract"):
        G.register_gate(Unfinished)
    assert "unfinished" not in G.gate_kinds()
