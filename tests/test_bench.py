"""`epsresnet bench train` and the benchmark helpers, on tiny nets (issue 6).

Speeds are not asserted (they are benchmarks, not tests); what is asserted: the command
runs and reports a positive img_s, its GFLOP arithmetic agrees with an independent MAC
count, the monitor-off gate changes nothing but the monitor, and the mixed-precision and
XLA paths train to a finite loss on CPU.
"""
import json
import math

import numpy as np
import pytest

from epsresnet_tf import bench
from epsresnet_tf.cli import main

TINY = (8, 8, 3)


def cifar_basic_macs(depth, hw=32, classes=10):
    """Forward MACs per image of cifar-basic-DEPTH counted by hand: stem 3x3 conv,
    2 convs per unit, the first unit of groups 2-3 strided from half the width."""
    n = (depth - 2) // 6
    macs = hw * hw * 9 * 3 * 16
    for g, w in enumerate((16, 32, 64)):
        s = hw // (2 ** g)
        cin = 16 if g == 0 else w // 2
        macs += s * s * 9 * cin * w + s * s * 9 * w * w
        macs += (n - 1) * 2 * s * s * 9 * w * w
    return macs + 64 * classes


def peak_by_hand():
    """cores x FP32 FLOP/cycle x clock: two FMA pipes of 16 (AVX-512) or 8 (AVX2) lanes."""
    mhz, flags = None, []
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz") and mhz is None:
            mhz = float(line.split(":")[1])
        if line.startswith("flags") and not flags:
            flags = line.split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    import os
    return None if mhz is None else len(os.sched_getaffinity(0)) * 2 * lanes * 2 * mhz / 1000


def test_bench_train_json(capsys):
    rc = main(["bench", "train", "cifar-basic-8", "--batch", "8", "--steps", "2",
               "--warmup", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["img_s"] > 0 and math.isfinite(out["final_loss"])
    assert out["macs"] == cifar_basic_macs(8)
    # training ≈ 3 forward passes, 2 FLOPs per MAC
    assert out["gflop_s"] == pytest.approx(out["img_s"] * 6 * cifar_basic_macs(8) / 1e9)
    assert out["step_ms"] == pytest.approx(1000 * 8 / out["img_s"])
    peak = peak_by_hand()
    if peak is not None:
        assert out["peak_gflop_s"] == pytest.approx(peak)
        assert out["peak_share"] == pytest.approx(out["gflop_s"] / peak)
    assert out["tensorflow"].startswith("2.") and out["keras"].startswith("3.")


def test_macs_of_the_benchmarked_depths_match_hand_count():
    from epsresnet_tf.models.describe import model_stats
    for depth in (20, 56):
        assert model_stats(bench.build(f"cifar-basic-{depth}"))["macs"] == cifar_basic_macs(depth)


def test_bench_train_text_and_user_errors(capsys):
    assert main(["bench", "train", "cifar-basic-8", "--gate", "eps", "--no-monitor",
                 "--batch", "4", "--steps", "1", "--warmup", "0"]) == 0
    assert "img/s" in capsys.readouterr().out
    assert main(["bench", "train", "cifar-basic-9"]) == 2
    assert main(["bench", "train", "cifar-basic-8", "--no-monitor"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("epsresnet bench: error:") for line in err)


def _monitor_values(model):
    from epsresnet_tf.layers import EpsilonGate
    return [(float(g.gate_value.numpy()), float(g.discarded_ema.numpy()),
             float(g.response_max.numpy()), float(g.response_mean.numpy()))
            for g in model.layers if isinstance(g, EpsilonGate)]


def test_monitor_off_gate_leaves_monitors_and_outputs_alone():
    import tensorflow as tf
    loud = bench.build("cifar-basic-8", "eps", epsilon=0.05, input_shape=TINY)
    quiet = bench.build("cifar-basic-8", "eps", epsilon=0.05, input_shape=TINY, monitor=False)
    quiet.set_weights(loud.get_weights())
    before = _monitor_values(quiet)
    assert len(before) == 3 and before == _monitor_values(loud)
    x = tf.random.stateless_normal((4,) + TINY, seed=(1, 2))
    np.testing.assert_allclose(quiet(x, training=True).numpy(), loud(x, training=True).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert _monitor_values(quiet) == before
    changed = _monitor_values(loud)
    assert changed != before and all(v[2] > 0 for v in changed)   # response_max was set
    # and inside a compiled training step too
    trainer = bench.Trainer(quiet, 4, loop="custom")
    trainer.run(2)
    assert _monitor_values(quiet) == before and math.isfinite(trainer.last_loss)


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_mixed_precision_and_xla_paths_train(loop):
    model = bench.build("cifar-basic-8", "eps", input_shape=TINY, mixed_precision=True)
    import keras
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "float16" for layer in convs)
    assert all(layer.kernel.dtype == "float32" for layer in convs)
    trainer = bench.Trainer(model, 4, loop=loop, jit_compile=True, steps_per_execution=2)
    assert trainer.mixed
    seconds, steps = trainer.run(4)
    assert seconds > 0 and steps >= 2
    assert math.isfinite(trainer.last_loss)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert keras.mixed_precision.global_policy().name == "float32"   # restored


def test_interleaved_variants_report_each():
    res = bench.measure_variants(
        {"none": dict(arch="cifar-basic-8"), "eps": dict(arch="cifar-basic-8", gate="eps"),
         "quiet": dict(arch="cifar-basic-8", gate="eps", monitor=False)},
        batch=4, steps=2, warmup=1, repeats=2, input_shape=TINY)
    assert set(res) == {"none", "eps", "quiet"}
    assert all(len(r["img_s_runs"]) == 2 and r["img_s"] > 0 for r in res.values())
    assert res["quiet"]["monitor"] is False and res["eps"]["monitor"] is True
    assert res["none"]["monitor"] is None
