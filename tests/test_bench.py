"""benchmarks/trainstep.py and `benchmarks/bench_train.py --one`, on tiny nets (issues 6, 12).

Speeds are not asserted (they are benchmarks, not tests). What is asserted: the timed
step is the one `epsresnet train` runs (its losses and weights equal `run_training`'s on
the same batch and initial weights, through the weight-decay staircase), the GFLOP
arithmetic agrees with an independent MAC count, monitors off changes nothing but the
monitors, the fp16 and XLA paths train to a finite loss on CPU, the one-configuration
command reports and refuses in one line; the driver's worker protocol (without torch),
its smoke run and its ratios; the per-epoch overhead and GPU commands' smoke runs.
(bf16's dtypes and the stored `--precision`: tests/test_precision.py.)
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_train  # noqa: E402
import trainstep  # noqa: E402

TINY = (8, 8, 3)


def cifar_basic_macs(depth, hw=32, classes=10, side_head=True):
    """Forward MACs per image of cifar-basic-DEPTH counted by hand: stem 3x3 conv,
    2 convs per unit, the first unit of groups 2-3 strided from half the width; the FC
    head (64 wide), and the side head's FC after unit ⌊3n/2⌋, which is in group 2 (32 wide)."""
    n = (depth - 2) // 6
    macs = hw * hw * 9 * 3 * 16
    for g, w in enumerate((16, 32, 64)):
        s = hw // (2**g)
        cin = 16 if g == 0 else w // 2
        macs += s * s * 9 * cin * w + s * s * 9 * w * w
        macs += (n - 1) * 2 * s * s * 9 * w * w
    return macs + 64 * classes + (32 * classes if side_head else 0)


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


def tiny_cfg(**kw):
    base = dict(
        arch="cifar-basic-8",
        gate="eps",
        batch=8,
        epsilon=0.05,
        epochs=1,
        val_steps=0,
        histogram_every=0,
    )
    base.update(kw)
    return trainstep.bench_config(**base)


# --- the step is run_training's ------------------------------------------------------------


class OneBatch:
    """A data source with the pipeline's interface whose every batch is (x, y)."""

    image_shape, num_classes = TINY, 10

    def __init__(self, x, y, num_batches):
        self.x, self.y, self.num_batches = x, y, num_batches

    def batches(self, data_pass):
        for _ in range(self.num_batches):
            yield self.x, self.y

    def normalise_np(self, x):
        return x


def test_timed_step_equals_run_trainings_step(tmp_path):
    """Same config, batch and initial weights: `run_training`'s logged losses and final
    weights are the benchmark's, step for step. wd_decay_every=1 puts the weight-decay
    staircase's ×0.2 into the second step, so a step without it would differ there."""
    import keras

    from epsresnet_tf.train.loop import run_training

    steps = 3
    cfg = tiny_cfg(steps_per_epoch=steps, wd_decay_every=1)
    assert cfg["side_head"] and cfg["optimizer"] == "momentum" and cfg["weight_decay"] > 0
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8,) + TINY).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["start"] = [w.copy() for w in self.model.net.get_weights()]
            seen["class"] = type(self.model)
            seen["optimizer"] = type(self.model.optimizer).__name__
            seen["losses"] = []

        def on_train_batch_end(self, batch, logs=None):
            seen["losses"].append(float(logs["loss"]))

        def on_train_end(self, logs=None):
            seen["end"] = [w.copy() for w in self.model.net.get_weights()]
            seen["count"] = self.model.discarded_count_value()

    result = run_training(
        cfg,
        tmp_path / "run",
        sources=(OneBatch(x, y, steps), None),
        verbose=0,
        extra_callbacks=[Spy()],
    )
    assert result["status"] == "done" and len(seen["losses"]) == steps

    model = trainstep.build_training_step(cfg, num_classes=10, image_shape=TINY)
    # the loop's own TrainingModel (epsresnet_tf.train.model), the loop's optimizer
    for method in ("train_step", "_forward", "wd_scale", "_update_discarded_count"):
        assert getattr(type(model), method).__code__ is getattr(seen["class"], method).__code__
    assert type(model.optimizer).__name__ == seen["optimizer"] == "TF1Momentum"
    assert model.has_side and model.wd_every == 1 and model.side_weight == 0.1
    model.net.set_weights(seen["start"])
    timer = trainstep.StepTimer(model, 8, loop="fit", x=x, y=y)
    timer.run(steps)
    np.testing.assert_allclose(timer.losses, seen["losses"], rtol=1e-6)
    for ours, theirs in zip(model.net.get_weights(), seen["end"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert model.discarded_count_value() == pytest.approx(seen["count"], abs=1e-6)


def test_custom_loop_runs_the_same_step():
    """The "custom" loop is a tf.function around the same train_step: same losses as fit."""
    cfg = tiny_cfg(wd_decay_every=1)
    runs = []
    for loop in ("fit", "custom"):
        model = trainstep.build_training_step(cfg, num_classes=10, image_shape=TINY)
        if runs:
            model.net.set_weights(runs[0][1])
        start = [w.copy() for w in model.net.get_weights()]
        timer = trainstep.StepTimer(model, 8, loop=loop)
        timer.run(2)  # custom: one untimed call, then 2: three steps; fit: two steps
        runs.append((timer.losses, start))
    (fit_losses, _), (custom_losses, _) = runs
    np.testing.assert_allclose(custom_losses[:2], fit_losses, rtol=1e-6)


# --- GFLOP arithmetic -----------------------------------------------------------------------


def test_one_json_reports_real_step_and_gflop_arithmetic(capsys):
    assert (
        bench_train.main(
            [
                "--one",
                "cifar-basic-8",
                "--gate",
                "eps",
                "--batch",
                "8",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["img_s"] > 0 and math.isfinite(out["final_loss"])
    assert out["side_head"] is True and out["optimizer"] == "momentum"
    assert out["wd_decay_every"] == 480000 and out["monitor"] is True
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
        model = trainstep.build_training_step(trainstep.bench_config(f"cifar-basic-{depth}"))
        assert model_stats(model.net)["macs"] == cifar_basic_macs(depth)


def test_one_text_and_user_errors(capsys):
    assert (
        bench_train.main(
            [
                "--one",
                "cifar-basic-8",
                "--gate",
                "eps",
                "--no-monitor",
                "--batch",
                "4",
                "--steps",
                "1",
                "--warmup",
                "0",
            ]
        )
        == 0
    )
    assert "img/s" in capsys.readouterr().out
    assert bench_train.main(["--one", "cifar-basic-9"]) == 2
    assert bench_train.main(["--one", "cifar-basic-8", "--no-monitor"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("bench_train.py --one: error:") for line in err)


def test_bench_is_no_longer_a_package_command():
    from epsresnet_tf.cli import COMMAND_MODULES

    assert "epsresnet_tf.bench" not in COMMAND_MODULES
    import epsresnet_tf

    assert not (Path(epsresnet_tf.__file__).parent / "bench.py").exists()


# --- monitors off -----------------------------------------------------------------------------


def _monitors(model):
    from epsresnet_tf.layers import EpsilonGate

    gates = [
        (
            float(g.gate_value.numpy()),
            float(g.discarded_ema.numpy()),
            float(g.response_max.numpy()),
            float(g.response_mean.numpy()),
        )
        for g in model.net.layers
        if isinstance(g, EpsilonGate)
    ]
    return gates, model.discarded_count_value()


def _non_monitor_weights(model):
    from epsresnet_tf.layers import EpsilonGate

    return [
        w.numpy()
        for layer in model.net.layers
        if not isinstance(layer, EpsilonGate)
        for w in layer.weights
    ]


def test_monitor_off_changes_nothing_but_the_monitors():
    cfg = tiny_cfg(epsilon=1000.0)  # T = 0: the discard monitors and the count move
    loud = trainstep.build_training_step(cfg, num_classes=10, image_shape=TINY)
    quiet = trainstep.build_training_step(cfg, num_classes=10, image_shape=TINY, monitor=False)
    quiet.net.set_weights(loud.net.get_weights())
    before = _monitors(quiet)
    assert len(before[0]) == 3 and before == _monitors(loud)
    runs = {}
    for name, model in (("loud", loud), ("quiet", quiet)):
        timer = trainstep.StepTimer(model, 8, loop="custom")
        timer.run(2)
        runs[name] = timer.losses
    np.testing.assert_allclose(runs["quiet"], runs["loud"], rtol=1e-6)
    for a, b in zip(_non_monitor_weights(quiet), _non_monitor_weights(loud)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert _monitors(quiet) == before
    gates, count = _monitors(loud)
    assert gates != before[0] and all(g[2] > 0 for g in gates)  # response_max was set
    assert all(g[0] == 0.0 and g[1] > 0 for g in gates)  # T = 0, discarded EMA
    assert type(quiet).train_step is type(loud).train_step  # the loop's step, unchanged
    assert count > 0 and before[1] == 0.0  # the discarded-count average


# --- other paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_fp16_and_xla_paths_train(loop):
    import keras

    cfg = tiny_cfg(precision="fp16", jit_compile=True)
    model = trainstep.build_training_step(
        cfg, num_classes=10, image_shape=TINY, steps_per_execution=2
    )
    convs = [layer for layer in model.net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "float16" for layer in convs)
    assert all(layer.kernel.dtype == "float32" for layer in convs)
    timer = trainstep.StepTimer(model, 8, loop=loop)
    assert "float16" in timer.compute_dtypes and timer.jit_compile and timer.spe == 2
    seconds, steps = timer.run(4)
    assert seconds > 0 and steps >= 2
    assert math.isfinite(timer.last_loss)
    assert all(np.isfinite(w).all() for w in model.net.get_weights())
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_interleaved_variants_report_each():
    res = trainstep.measure_variants(
        {
            "none": dict(arch="cifar-basic-8"),
            "eps": dict(arch="cifar-basic-8", gate="eps"),
            "quiet": dict(arch="cifar-basic-8", gate="eps", monitor=False),
        },
        batch=4,
        steps=2,
        warmup=1,
        repeats=2,
        input_shape=TINY,
        classes=10,
    )
    assert set(res) == {"none", "eps", "quiet"}
    assert all(len(r["img_s_runs"]) == 2 and r["img_s"] > 0 for r in res.values())
    assert res["quiet"]["monitor"] is False and res["eps"]["monitor"] is True
    assert res["none"]["monitor"] is None
    assert all(r["side_head"] and r["optimizer"] == "momentum" for r in res.values())


# --- the driver's workers (benchmarks/workers.py), without torch -------------------------------

STUB_WORKER = """
import sys, time
sys.path.insert(0, {here!r})
import workers
state = {{}}
def setup(name, spec):
    state[name] = spec["rate"]
    print("noise on stdout must not reach the driver")
    return {{"build_s": 0.0, "batch": 4}}
def timed(name, steps):
    return {{"seconds": steps / state[name], "steps": steps, "loss": 1.0}}
workers.serve({{"info": lambda: {{"framework": "stub"}}, "setup": setup, "time": timed}})
"""


def test_worker_protocol_answers_errors_and_quits():
    import workers

    code = STUB_WORKER.format(here=str(BENCHMARKS))
    w = workers.Worker("stub", [sys.executable, "-c", code])
    try:
        assert w.request("info") == {"framework": "stub"}
        # two setups sent before either answer is read: both workers of a driver build at once
        w.send("setup", name="a", spec={"rate": 2.0})
        w.send("setup", name="b", spec={"rate": 4.0})
        assert w.receive() == {"build_s": 0.0, "batch": 4} == w.receive()
        assert w.request("time", name="b", steps=8) == {"seconds": 2.0, "steps": 8, "loss": 1.0}
        with pytest.raises(workers.WorkerError, match="^stub: KeyError: 'c'$"):
            w.request("time", name="c", steps=1)
        with pytest.raises(workers.WorkerError, match="unknown op 'fly'"):
            w.request("fly")
        assert w.request("time", name="a", steps=2)["seconds"] == 1.0  # still serving
    finally:
        w.close()
    assert w.proc.returncode == 0
    dead = workers.Worker("dead", [sys.executable, "-c", "import sys; sys.exit('gone: 3')"])
    with pytest.raises(workers.WorkerError, match="dead worker (died|has exited).*gone: 3"):
        dead.request("info")
    dead.close()


def fake_results(rounds=5):
    """bench_peer's results with made-up rates: ours 120 / 240, the peer 100 / 200 (eager)
    and 90 / 210 (compiled), the gate 2% and 1% slower."""
    import bench_peer

    def v(who, precision, base):
        runs = [base * (1 + 0.01 * (r - 2)) for r in range(rounds)]
        return {"who": who, "precision": precision, "img_s_runs": runs, "img_s": base}

    variants = {
        "ours-f32": v("ours", "float32", 120.0),
        "torch-f32": v("peer", "float32", 100.0),
        "ours-bf16": v("ours", "bf16", 240.0),
        "torch-bf16": v("peer", "bf16", 200.0),
        "ours-f32-eps": v("ours", "float32", 120.0 / 1.02),
        "torch-f32-compile": v("peer", "float32", 90.0),
        "ours-bf16-eps": v("ours", "bf16", 240.0 / 1.01),
        "torch-bf16-compile": v("peer", "bf16", 210.0),
        "ours-f32-eps-quiet": v("ours", "float32", 120.0 / 1.015),
        "ours-bf16-20": v("ours", "bf16", 1500.0),
    }
    return bench_peer, {
        "date": "2026-01-01",
        "machine": "a CPU",
        "info": {
            "ours": {"tensorflow": "2.x", "keras": "3.x"},
            "peer": {"torch": "2.y", "threads": 2, "cpu_capability": "AVX512"},
        },
        "rounds": rounds,
        "steps": 6,
        "order": list(variants),
        "loads": [[0.5, 0.6]] * rounds,
        "variants": variants,
    }


def test_ratios_take_the_peers_best_per_precision_within_rounds():
    bench_peer, res = fake_results()
    assert bench_peer.peer_best(res, "float32") == "torch-f32"
    assert bench_peer.peer_best(res, "bf16") == "torch-bf16-compile"
    best, rs = bench_peer.ratios(res, "ours-f32", "float32")
    assert best == "torch-f32" and rs == pytest.approx([1.2] * 5)
    _, rs = bench_peer.ratios(res, "ours-bf16", "bf16")
    assert rs == pytest.approx(
        [240.0 * (1 + 0.01 * (r - 2)) / (210 * (1 + 0.01 * (r - 2))) for r in range(5)]
    )
    assert bench_peer.overhead(res, "ours-f32", "ours-f32-eps") == pytest.approx([2.0] * 5)
    assert bench_peer.pipeline_consumption(res) == ("ours-bf16-20", 1500.0)
    text = bench_peer.training_body(res)
    assert "| float32 | ours-f32 | torch-f32 | 1.20× (1.20–1.20) | met |" in text
    assert "| bf16 | ours-bf16 | torch-bf16-compile | 1.14× (1.14–1.14) | **not met** |" in text
    assert "busy machine" not in text and "load during the rounds 0.50–0.60" in text
    gate = bench_peer.gate_body(res)
    assert "| float32 | +1.5% (+1.5–+1.5) | +2.0% (+2.0–+2.0) | met |" in gate
    res["loads"][2] = [3.0, 2.5]
    assert "busy machine" in bench_peer.training_body(res)


def test_interleaving_alternates_ours_and_the_peers():
    import bench_peer

    assert bench_peer.interleaved(["a", "b", "c"], ["X"]) == ["a", "X", "b", "c"]
    assert bench_peer.interleaved(["a"], ["X", "Y"]) == ["a", "X", "Y"]


def test_driver_smoke_times_ours_in_a_worker_round():
    """`bench_peer.py --smoke --no-peer`: our worker subprocess, tiny nets, one round."""
    import bench_peer
    import benchmd

    assert bench_peer.main(["--smoke", "--no-peer", "--no-write"]) == 0
    res = benchmd.load_results("peer-smoke")
    assert res["rounds"] == 1 and res["info"]["ours"]["tensorflow"].startswith("2.")
    assert set(res["variants"]) == {
        "ours-f32",
        "ours-bf16",
        "ours-f32-eps",
        "ours-bf16-eps",
        "ours-f32-eps-quiet",
        "ours-f32-eps-c50",  # the backward skip's pair: half the blocks closed, on and off
        "ours-f32-eps-c50-noskip",
    }
    pair = (
        res["variants"]["ours-f32-eps-c50"]["setup"],
        res["variants"]["ours-f32-eps-c50-noskip"]["setup"],
    )
    assert [(s["closed"], s["blocks"], s["backward_skip"]) for s in pair] == [
        (1, 3, True),
        (1, 3, False),
    ]
    assert "| float32 | 50% (1 of 3) |" in bench_peer.skip_body(res)
    for v in res["variants"].values():
        assert v["who"] == "ours" and len(v["img_s_runs"]) == 1 and v["img_s"] > 0
        assert v["setup"]["arch"] == "cifar-basic-8" and v["setup"]["batch"] == 8
        assert v["setup"]["precision"] == v["precision"]
        assert ("bfloat16" in v["setup"]["compute_dtypes"]) == (v["precision"] == "bf16")
    assert res["variants"]["ours-f32-eps-quiet"]["setup"]["monitor"] is False


PEER_PYTHON = BENCHMARKS / ".venv-peer" / "bin" / "python"


@pytest.mark.slow  # imports torch in a second interpreter: about a minute on 2 busy cores
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no benchmarks/.venv-peer (make bench-peer)")
def test_peer_worker_trains_the_same_network_in_torch():
    import workers

    w = workers.Worker(
        "peer", [str(PEER_PYTHON), str(BENCHMARKS / "bench_torch_reference.py"), "--worker"]
    )
    try:
        assert w.request("info")["framework"] == "pytorch"
        spec = dict(depth=8, batch=4, channels_last=True, bf16=True, warmup=1)
        built = w.request("setup", name="t", spec=spec)
        assert built["macs"] == cifar_basic_macs(8) and built["bf16"] is True
        answer = w.request("time", name="t", steps=2)
        assert answer["steps"] == 2 and answer["seconds"] > 0 and math.isfinite(answer["loss"])
    finally:
        w.close()


# --- the per-epoch overhead and GPU commands ---------------------------------------------------


def test_epoch_overhead_times_the_runs_own_callbacks(capsys):
    import bench_epoch

    class Args:
        arch, epochs, batch, history, smoke = "cifar-basic-8", 2, 8, 2, True

    res = bench_epoch.measure(Args(), log=lambda m: None)
    for key in ("fresh", "late"):
        r = res[key]
        assert r["epochs"] == 1 and r["outside_s"] > 0 and r["step_s"] > 0
        names = {k.split(".")[0] for k in r["hooks"]}
        assert {"CheckpointCallback", "HistoryCallback", "MonitorCallback"} <= names
        # the file writes run on the writer thread, each timed there
        assert set(r["background"]) == {"checkpoint", "history", "tensorboard"}
        assert all(t > 0 for t in r["background"].values())
    text = bench_epoch.body(res)
    assert "| from epoch 0 |" in text and "| after 2 epochs of history |" in text
    assert "| checkpoint |" in text


@pytest.mark.slow  # the GPU driver's whole smoke on CPU: ~27 s, over make test's budget
def test_gpu_command_smoke_runs_on_cpu_and_refuses_without_gpu(capsys):
    import bench_gpu
    import benchmd

    assert bench_gpu.main([]) == 2  # no GPU here: nothing measured, the section stays pending
    assert "no GPU" in capsys.readouterr().out
    assert bench_gpu.main(["--smoke"]) == 0
    res = benchmd.load_results("gpu-smoke")
    rows = {**res["cifar"], **res["imagenet"]}
    assert len(rows) == 3 and all(r.get("img_s", 0) > 0 for r in rows.values()), rows
    assert {r["precision"] for r in res["cifar"].values()} == {"bf16", "fp16"}
    assert all(r["jit_compile"] for r in rows.values())
    assert set(res["pipeline"]) == {"0", "1"} and all(v > 0 for v in res["pipeline"].values())


def test_bf16_accuracy_section_is_written_from_the_runs_final_rows(tmp_path, monkeypatch):
    import bench_bf16

    finals = {("float32", 0): 0.30, ("bf16", 0): 0.31, ("float32", 1): 0.33}
    calls = []

    def fake_train(recipe, precision, seed, args):
        calls.append((precision, seed))
        row = {"val_error": finals[(precision, seed)], "loss": 1.0, "discarded_count": 0.0}
        return row, 600.0

    monkeypatch.setattr(bench_bf16, "train", fake_train)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## bfloat16 accuracy\n\nold\n\n## GPU\n\nkept\n")
    assert bench_bf16.main(["--bench-md", str(md), "--seeds", "0,1"]) == 0
    assert calls == [("float32", 0), ("bf16", 0), ("float32", 1)]
    text = md.read_text()
    assert "old" not in text and "## GPU\n\nkept" in text
    assert "| bf16 | 0 | 31.00% | 1.000 | 0.00 |" in text
    # 1 point from float32 at the same seed; seeds alone moved float32 by 3: within
    assert "1.00 points; float32 across seeds: 3.00 points;" in text
    assert "**within the noise**" in text
    # 2 standard errors of 30% on 1,017 images: 2.87 points; 4 points off is outside
    finals.update({("bf16", 0): 0.34, ("float32", 1): 0.30})
    assert bench_bf16.main(["--bench-md", str(md), "--seeds", "0,1"]) == 0
    assert "standard errors of the test error: 2.87 points: **outside the noise**" in md.read_text()


@pytest.mark.slow  # two short demo trainings in fresh processes: ~40 s on 2 cores
def test_whole_run_driver_compares_two_bit_identical_runs():
    """`bench_skip_run.py --smoke`: `epsresnet train demo` (2 epochs of ResNet-8) with the
    skip on and off; the driver itself checks that both end with the same checkpoint."""
    import bench_skip_run
    import benchmd

    assert bench_skip_run.main(["--smoke", "--no-write"]) == 0
    res = benchmd.load_results("skip-run-smoke")
    on, off = res["runs"]["on"], res["runs"]["off"]
    assert len(on) == len(off) == 1 and on[0]["epochs"] == off[0]["epochs"] == 2
    assert on[0]["epochs_s"] > 0 and on[0]["discarded_count"] == off[0]["discarded_count"]
    assert "| wall time of the command, s |" in bench_skip_run.body(res)
