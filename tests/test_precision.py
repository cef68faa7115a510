"""The `precision` key and `--precision` (issue 15): float32 (default), bf16 (Keras
mixed_bfloat16) or fp16 (mixed_float16). What is asserted: older configs and recipes with
`mixed_precision` still resolve, resume and rebuild; under bf16 the layers compute in
bfloat16 while the gates' T, ε and monitors, the BatchNorm statistics, the logits, the
loss and the optimizer state stay float32; a bf16 step trains to a finite loss; and
`epsresnet train --precision bf16` stores it in config.json and trains a bf16 net."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from epsresnet_tf.config import (
    PRECISIONS,
    dtype_policy,
    resolve_config,
    saved_config,
    upgrade_legacy,
)
from epsresnet_tf.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TINY = (8, 8, 3)


# --- the config key ---------------------------------------------------------------------------


def test_precision_defaults_to_float32_and_maps_to_keras_policies():
    cfg = resolve_config({})
    assert cfg["precision"] == "float32" and "mixed_precision" not in cfg
    assert dtype_policy(cfg) == "float32"
    assert dtype_policy(resolve_config({}, precision="bf16")) == "mixed_bfloat16"
    assert dtype_policy(resolve_config({}, precision="fp16")) == "mixed_float16"
    assert set(PRECISIONS) == {"float32", "bf16", "fp16"}


def test_mixed_precision_of_older_recipes_and_configs_still_means_fp16():
    assert resolve_config({"mixed_precision": True})["precision"] == "fp16"
    assert resolve_config({"mixed_precision": False})["precision"] == "float32"
    assert resolve_config({}, mixed_precision=True)["precision"] == "fp16"
    # the command line's --precision overrides a recipe's old flag
    assert resolve_config({"mixed_precision": True}, precision="bf16")["precision"] == "bf16"
    # a config.json written before the key existed
    old = {"arch": "cifar-basic-8", "dataset": "cifar10", "mixed_precision": True}
    assert saved_config(old)["precision"] == "fp16" and "mixed_precision" in old
    assert dtype_policy(old) == "mixed_float16"
    assert dtype_policy({"mixed_precision": False}) == dtype_policy({}) == "float32"
    assert upgrade_legacy({"precision": "bf16"}) == {"precision": "bf16"}


def test_bad_precisions_are_one_line_errors():
    with pytest.raises(UserError, match="^precision must be one of float32, bf16, fp16, got 'x'$"):
        resolve_config({}, precision="x")
    with pytest.raises(UserError, match="^mixed_precision: true .* contradicts precision 'bf16'"):
        resolve_config({}, mixed_precision=True, precision="bf16")


def test_a_run_folder_of_an_older_version_resumes(tmp_path):
    """Its config.json has mixed_precision: false and no precision: the same run."""
    from epsresnet_tf.runfolder import RunFolder

    cfg = resolve_config({"arch": "cifar-basic-8"})
    old = {k: v for k, v in cfg.items() if k != "precision"}
    old["mixed_precision"] = False
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(old))
    folder = RunFolder(tmp_path / "run")
    folder.check_config(cfg)  # no error
    with pytest.raises(UserError, match="another config .*precision: 'float32' -> 'bf16'"):
        folder.check_config(dict(cfg, precision="bf16"))


# --- bf16: what stays float32 -------------------------------------------------------------------


def _bf16_model():
    import trainstep

    cfg = trainstep.bench_config(
        "cifar-basic-8", "eps", batch=8, epsilon=0.05, precision="bf16", histogram_every=0
    )
    return trainstep, trainstep.build_training_step(cfg, num_classes=10, image_shape=TINY)


def test_bf16_keeps_gates_monitors_bn_loss_and_optimizer_state_float32():
    import keras

    from epsresnet_tf.layers import EpsilonGate, FusedBatchNormalization

    trainstep, model = _bf16_model()
    net = model.net
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(c.compute_dtype == "bfloat16" for c in convs)
    assert all(c.kernel.dtype == "float32" for c in convs)
    gates = [layer for layer in net.layers if isinstance(layer, EpsilonGate)]
    assert len(gates) == 3
    for g in gates:
        for v in (g.epsilon, g.gate_value, g.discarded_ema, g.response_max, g.response_mean):
            assert v.dtype == "float32", v.path
    bns = [layer for layer in net.layers if isinstance(layer, FusedBatchNormalization)]
    assert bns and all(
        v.dtype == "float32" for b in bns for v in (b.moving_mean, b.moving_variance, b.gamma)
    )
    assert net.get_layer("logits").compute_dtype == "float32"
    assert model.discarded_count.dtype == "float32"
    # no loss scaling for bfloat16; momentum slots float32
    assert type(model.optimizer).__name__ == "TF1Momentum"
    assert all(v.dtype == "float32" for v in model.optimizer.variables if "iteration" not in v.path)
    x, y = trainstep.synthetic_batch(net, 8)
    loss, xent, logits, side = model._forward(x, y, True)
    assert loss.dtype == xent.dtype == logits.dtype == side.dtype == "float32"
    # T is computed in float32 from the bfloat16 residual
    residual = keras.ops.cast(keras.ops.ones((8, 4, 4, 16)) * 0.5, "bfloat16")
    assert gates[0].gate(keras.ops.cast(residual, "float32")).dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_a_bf16_step_trains_to_a_finite_loss_and_moves_the_monitors():
    trainstep, model = _bf16_model()
    before = [w.copy() for w in model.net.get_weights()]
    timer = trainstep.StepTimer(model, 8, loop="fit")
    assert timer.compute_dtypes == {"bfloat16", "float32"}
    seconds, steps = timer.run(3)
    assert seconds > 0 and steps == 2
    assert all(math.isfinite(v) for v in timer.losses) and len(timer.losses) == 3
    after = model.net.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    from epsresnet_tf.layers import EpsilonGate

    gates = [g for g in model.net.layers if isinstance(g, EpsilonGate)]
    assert all(float(g.response_max.numpy()) > 0 for g in gates)


def test_train_cli_stores_precision_bf16_and_trains_a_bf16_net(tmp_path, capsys):
    import keras

    from epsresnet_tf import cli

    argv = ["train", "demo", "--out", str(tmp_path), "--name", "bf16", "--epochs", "1"]
    argv += ["--steps-per-epoch", "2", "--val-steps", "0", "--quiet", "--precision", "bf16"]
    try:
        assert cli.main(argv) == 0
        cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
        assert cfg["precision"] == "bf16" and "mixed_precision" not in cfg
        rows = [
            json.loads(r) for r in (tmp_path / "bf16" / "history.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 1 and math.isfinite(rows[0]["loss"])
        net = keras.saving.load_model(tmp_path / "bf16" / "model.keras")
        convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs and all(c.compute_dtype == "bfloat16" for c in convs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    capsys.readouterr()
    bad = ["train", "demo", "--out", str(tmp_path), "--precision", "bf16", "--mixed-precision"]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "contradicts precision 'bf16'" in err[0]
    assert cli.main(["train", "demo", "--out", str(tmp_path), "--precision", "half"]) == 2
    assert "precision must be one of" in capsys.readouterr().err


def test_bf16_gate_reads_max_abs_F_in_bfloat16_and_gives_float32s_T_and_monitors():
    """The gate reduces a bfloat16 F without casting it whole: T and max|F| equal those of
    the same values in float32 bit for bit (the max of bfloat16 values is one of them);
    mean|F| (a monitor) within bfloat16's rounding of the mean."""
    import keras

    from epsresnet_tf.layers import EpsilonGate

    rng = np.random.default_rng(3)
    values = rng.standard_normal((8, 4, 4, 16)).astype(np.float32) * 2.0
    f_bf16 = keras.ops.cast(values, "bfloat16")
    f_f32 = keras.ops.cast(f_bf16, "float32")  # the same numbers, in float32
    for eps in (0.5, float(np.max(np.abs(keras.ops.convert_to_numpy(f_f32)))), 100.0):
        a = EpsilonGate(epsilon=eps, dtype="mixed_bfloat16")
        b = EpsilonGate(epsilon=eps)
        out_bf16 = a(f_bf16, training=True)
        b(f_f32, training=True)
        assert out_bf16.dtype == "bfloat16"
        assert float(a.gate_value.numpy()) == float(b.gate_value.numpy())
        assert float(a.response_max.numpy()) == float(b.response_max.numpy())
        mean_a, mean_b = float(a.response_mean.numpy()), float(b.response_mean.numpy())
        assert mean_a == pytest.approx(mean_b, rel=2**-8)
