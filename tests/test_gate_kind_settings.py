"""A gate kind with a hyper-parameter of its own, registered from this file alone: a
"threshold" gate u = s·F + x with one trainable scalar s, whose factor is 0 (the block is
discarded) while |s| is below a threshold — the kind's own config key `scale_threshold`,
scheduled onto the layer's `threshold` variable each epoch. Nothing in the package names
it; these tests show the key in the config, validation and config.json, and the
hyper-parameter in the history, the console, TensorBoard and the certificate, and a
resume of its run folder."""

import json

import keras
import numpy as np
import pytest
from _sources import Synthetic
from keras import ops

from epsresnet_tf import compress as C
from epsresnet_tf import gates as G
from epsresnet_tf import layers as L
from epsresnet_tf.config import parse_setting, resolve_config, saved_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.runconfig import RunConfig
from epsresnet_tf.train.loop import run_training
from epsresnet_tf.train.schedules import PiecewiseSchedule


@keras.saving.register_keras_serializable(package="epsresnet_tf_tests")
class ThresholdGate(L.GateLayer):
    """u = φ·F + x on a pair [F, x], φ = s where |s| >= threshold, else 0; s starts at 1."""

    def __init__(self, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_threshold = float(threshold)

    def build(self, input_shape):
        self.s = self.add_weight(
            name="s", shape=(), initializer=keras.initializers.Constant(1.0), autocast=False
        )
        self.threshold = L.monitor_weight(self, "threshold", self.initial_threshold)
        self.discarded_ema = L.monitor_weight(self, "discarded_ema", 0.0)
        self.monitor_steps = L.monitor_weight(self, "monitor_steps", 0.0)

    def factor(self):
        s = ops.convert_to_tensor(self.s)
        return ops.where(ops.abs(s) >= ops.convert_to_tensor(self.threshold), s, 0.0)

    def call(self, inputs, training=None):
        residual, shortcut = inputs
        phi = self.factor()
        if training:
            steps = ops.convert_to_tensor(self.monitor_steps)
            L.moving_average(self.discarded_ema, ops.cast(ops.equal(phi, 0.0), "float32"), steps)
            self.monitor_steps.assign(steps + 1.0)
        return ops.cast(phi, residual.dtype) * residual + shortcut

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "threshold": self.initial_threshold}


class ThresholdKind(G.ScalarGateKind):
    name = "threshold"
    label = "threshold"
    layer = ThresholdGate
    suffix = "threshold_gate"
    formula = "s F + x (s = 0 below the threshold)"
    factor_name = "s"
    hyper_parameters = ("threshold",)
    hyper_labels = {"threshold": "thr"}
    settings = {"scale_threshold": 0.25}

    def check_settings(self, settings):
        if settings["scale_threshold"] < 0:
            raise UserError(f"scale_threshold must be >= 0, got {settings['scale_threshold']}")

    def net_options(self, settings, training_start=False):
        return {"gate_options": {"threshold": settings["scale_threshold"]}}

    def schedules(self, settings):
        return {"threshold": PiecewiseSchedule([(0, settings["scale_threshold"])])}

    def make_layer(self, config, name):
        return ThresholdGate(config.gate_options.get("threshold", 0.0), name=name)

    def factor_tensor(self, layer):
        return layer.factor()


@pytest.fixture
def threshold_kind():
    G.register_gate(ThresholdKind)
    yield G.get_gate("threshold")
    G.unregister_gate("threshold")


def _recipe(**extra):
    return {
        "arch": "cifar-basic-8",
        "gate": "threshold",
        "batch_size": 4,
        "val_steps": 0,
        "histogram_every": 0,
        "side_head": False,
        "summary_every_steps": 0,
        **extra,
    }


def test_the_kinds_key_is_a_config_key_of_its_runs_only(threshold_kind):
    cfg = resolve_config(_recipe(scale_threshold=0.5))
    assert cfg["scale_threshold"] == 0.5 and cfg["gate"] == "threshold"
    assert resolve_config(_recipe())["scale_threshold"] == 0.25  # the kind's default
    assert parse_setting("scale_threshold=1") == ("scale_threshold", 1.0)  # a float key
    run = RunConfig.from_dict(cfg)
    assert run.gate.kind is threshold_kind and run.gate.own == {"scale_threshold": 0.5}
    assert run.as_dict() == cfg
    with pytest.raises(UserError, match=r"^scale_threshold must be >= 0, got -1"):
        resolve_config(_recipe(), scale_threshold=-1.0)
    with pytest.raises(UserError, match=r"^scale_threshold is a setting of gate 'threshold'"):
        resolve_config(_recipe(gate="eps", scale_threshold=0.5))
    with pytest.raises(UserError, match=r"^scale_threshold must be a number"):
        resolve_config(_recipe(scale_threshold="high"))


def test_its_hyper_parameter_reaches_history_console_tensorboard_and_certificate(
    threshold_kind, tmp_path, capsys
):
    from test_train_loop import read_events

    root = tmp_path / "run"
    cfg = resolve_config(_recipe(epochs=1, scale_threshold=0.5))
    sources = (Synthetic(batch=4, num_batches=2), None)
    result = run_training(cfg, root, sources=sources, verbose=2)
    assert result["status"] == "done"

    row = result["history"][-1]
    assert row["threshold"] == 0.5 and "epsilon" not in row
    assert set(row["blocks"]) == {f"group{g}/block0" for g in range(3)}
    epoch_line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1")]
    assert epoch_line and "thr 0.5" in epoch_line[0], epoch_line

    events, _ = read_events(root / "tb" / "train")
    (event,) = events["schedule/threshold"]
    assert float(np.asarray(_tensor(event))) == 0.5
    assert json.loads((root / "config.json").read_text())["scale_threshold"] == 0.5

    net = keras.models.load_model(root / "model.keras", compile=False)
    gates = G.gate_by_block(net)
    assert all(G.kind_of(g) is threshold_kind for g in gates.values())
    assert all(float(g.threshold.numpy()) == 0.5 for g in gates.values())  # scheduled, saved
    gates["group1/block0"].s.assign(0.3)  # below the threshold: φ = 0, the block adds 0
    cert = C.certify(net, {})
    assert cert.closed == ["group1/block0"]
    entry = cert.blocks["group1/block0"].as_dict()
    assert entry["kind"] == "threshold" and entry["threshold"] == 0.5 and entry["g"] == 0.0


def test_its_run_folder_resumes_with_the_key(threshold_kind, tmp_path):
    root = tmp_path / "run"
    sources = (Synthetic(batch=4, num_batches=2), None)
    first = run_training(resolve_config(_recipe(epochs=1)), root, sources=sources, verbose=0)
    assert first["status"] == "done"
    saved = json.loads((root / "config.json").read_text())
    assert RunConfig.from_dict(saved_config(saved)).gate.own == {"scale_threshold": 0.25}
    again = run_training(resolve_config(_recipe(epochs=2)), root, sources=sources, verbose=0)
    assert [r["epoch"] for r in again["history"]] == [1, 2]
    assert [r["threshold"] for r in again["history"]] == [0.25, 0.25]
    with pytest.raises(UserError, match="scale_threshold"):  # a past-changing key: refused
        run_training(resolve_config(_recipe(epochs=3, scale_threshold=0.1)), root, sources=sources)


def _tensor(event):
    import tensorflow as tf

    return tf.make_ndarray(event.tensor_proto)
