"""The training loop on real data (the CIFAR-10 subset in ../shared/data) and on tiny
synthetic data: run folder, history, TensorBoard, ε schedule, NaN stop, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
from _reference import tensorpack_ema
from _sources import Synthetic, tiny

from epsresnet_tf.config import resolve_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.train.loop import run_training

BIG_EPS = 1000.0  # every |F| stays below it: T = 0 in every block, every step
STEPS = 6


def read_events(tb_dir):
    """{tag: [(step, value or None)]} from the event files, via TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {}
    for tag in tags.get("tensors", []):
        events = acc.Tensors(tag)
        out[tag] = events
    return out, tags


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, shared_data):
    # ε = 0 for the first epoch (a plain ResNet, T = 1), then a huge ε (T = 0): the
    # authors' warm-up schedule, with outcomes we can compute by hand.
    cfg = resolve_config(
        {
            "arch": "cifar-basic-14",
            "epochs": 2,
            "batch_size": 16,
            "steps_per_epoch": STEPS,
            "val_steps": 2,
            "epsilon": BIG_EPS,
            "epsilon_start_epoch": 1,
            "lr_schedule": [[0, 0.05], [1, 0.02]],
        }
    )
    run_dir = tmp_path_factory.mktemp("runs") / "c10"
    result = run_training(cfg, run_dir, shared_data / "cifar10-subset", verbose=0)
    return cfg, Path(run_dir), result


def test_run_folder_layout(cifar_run):
    cfg, run_dir, result = cifar_run
    assert result["status"] == "done"
    assert json.loads((run_dir / "config.json").read_text()) == cfg
    assert (run_dir / "model.keras").is_file()
    assert [p.name for p in sorted((run_dir / "ckpt").glob("*.npz"))] == [
        "epoch-00001.npz",
        "epoch-00002.npz",
    ]
    assert not list(run_dir.rglob(".tmp*")), "temporary checkpoint files left behind"


def test_history_one_row_per_epoch_with_monitors(cifar_run):
    _, run_dir, _ = cifar_run
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    blocks = [f"group{g}/block{b}" for g in range(3) for b in range(2)]  # 14 = 6*2 + 2
    for r in rows:
        assert list(r["blocks"]) == blocks
        assert r["blocks_discarded_sum"] == pytest.approx(
            sum(b["discarded"] for b in r["blocks"].values())
        )
        assert r["discarded_ratio"] == pytest.approx(r["discarded_count"] / 6)
        # all_cnt = n * 3 + 2 = 8 for n = 2 (cifarEpsilonResnet.py:65, :133-134)
        assert r["discarded_ratio_authors"] == pytest.approx(r["discarded_count"] / 8)
        assert 0 <= r["val_error"] <= 1 and 0 <= r["val_side_error"] <= 1
    # epoch 1: ε = 0, T = 1 in every step, the EMA of 1 - T stays 0
    assert rows[0]["epsilon"] == 0.0 and rows[0]["discarded_count"] == 0.0
    # epoch 2: all 6 blocks discarded in each step; the count is ONE tensorpack moving
    # average (decay 0.95 with its num_updates warm-up) of the per-step count 6
    expected = tensorpack_ema([6] * STEPS, start_step=STEPS)[-1]
    assert rows[1]["discarded_count"] == pytest.approx(float(expected), rel=1e-6)
    # epoch 2: ε = 1000, T = 0 in each of its STEPS steps: each block its share of that
    assert rows[1]["epsilon"] == BIG_EPS
    for b in rows[1]["blocks"].values():
        assert b["discarded"] == pytest.approx(float(expected) / 6, abs=1e-6)
        assert b["gate"] == 0.0 and b["response_max"] <= BIG_EPS
    # the lr schedule: 0.05 before the first epoch, 0.02 after it
    assert rows[0]["lr"] == pytest.approx(0.05) and rows[1]["lr"] == pytest.approx(0.02)
    assert rows[1]["step"] == 2 * STEPS


def test_tensorboard_holds_scalars_blocks_histograms_strip(cifar_run):
    _, run_dir, _ = cifar_run
    events, tags = read_events(run_dir / "tb" / "train")
    ratio = events["discarding/ratio"]
    assert [e.step for e in ratio] == [1, 2]
    values = [
        float(np.asarray(__import__("tensorflow").make_ndarray(e.tensor_proto))) for e in ratio
    ]
    expected = float(tensorpack_ema([6] * STEPS, start_step=STEPS)[-1])
    assert values[0] == 0.0 and values[1] == pytest.approx(expected / 6, rel=1e-6)
    for tag in (
        "schedule/lr",
        "schedule/epsilon",
        "metrics/error",
        "group2/block1/discarded",
        "discarding/count",
        "discarding/ratio_authors",
        "group0/block0/response_max",
        "group1/block0/conv1_kernel",
        "discarded_blocks",
    ):
        assert tag in events, tag
    validation, _ = read_events(run_dir / "tb" / "validation")
    assert "metrics/error" in validation  # the same tag as training's, in its own run


def test_final_model_reloads_and_predicts(cifar_run):
    import keras

    _, run_dir, _ = cifar_run
    net = keras.saving.load_model(run_dir / "model.keras")
    out = net(np.zeros((2, 32, 32, 3), np.float32))
    assert out["logits"].shape == (2, 10)


# --- synthetic sources: fast checks of failure paths ---------------------------------


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "nan"
    result = run_training(tiny(), run, sources=(Synthetic(nan_from=1), None), verbose=0)
    assert result["status"] == "nan"
    assert [p.name for p in (run / "ckpt").glob("*.npz")] == ["epoch-00001.npz"]
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    assert not (run / "model.keras").exists()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stopped")]
    # the in-graph flag names the first step whose loss was NaN: step 6 (4 steps an epoch;
    # step 5's NaN images give a finite loss, ReLU maps NaN to 0, but NaN gradients)
    (line,) = lines
    assert line.startswith("stopped: epoch 2 went non-finite (training loss at step 6, weights:")
    assert line.endswith("; last good checkpoint kept: epoch-00001.npz")


def test_different_config_is_refused_and_nothing_overwritten(tmp_path):
    run = tmp_path / "r"
    run_training(tiny(epochs=1), run, sources=(Synthetic(), None), verbose=0)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="another config"):
        run_training(tiny(epochs=1, epsilon=1.0), run, sources=(Synthetic(), None), verbose=0)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert before == after


def test_weight_decay_factor_in_graph_follows_the_staircase():
    """The ×0.2-every-480,000-steps factor is computed in the graph from the optimizer's
    step; compare it with the pure-Python staircase at the boundaries."""
    import keras

    from epsresnet_tf.models import build_model
    from epsresnet_tf.train.model import TrainingModel
    from epsresnet_tf.train.schedules import weight_decay_factor

    net = build_model("cifar-basic-8", input_shape=(8, 8, 3), gate="eps", epsilon=1.0)
    model = TrainingModel(net, wd_every=480_000, wd_factor=0.2)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(net.trainable_variables)
    for step in (0, 479_999, 480_000, 960_000, 1_500_000):
        model.optimizer.iterations.assign(step)
        assert float(model.wd_scale()) == pytest.approx(weight_decay_factor(step), rel=1e-6)


class _Synthetic:
    """A tiny in-memory source (the loop's source interface), the same batches every epoch."""

    image_shape, num_classes, num_batches = (8, 8, 3), 10, 3

    def batches(self, epoch):
        rng = np.random.default_rng(0)
        for _ in range(self.num_batches):
            yield (
                rng.normal(size=(8, 8, 8, 3)).astype(np.float32) * 2,
                rng.integers(0, 10, 8).astype(np.int32),
            )

    def normalise_np(self, x):
        return x


def test_the_gpu_settings_train_on_cpu_with_float32_gates(tmp_path):
    # --mixed-precision and --xla are the GPU path (issue 6); on CPU the same code runs:
    # mixed_float16 layers, float32 gates and logits, an XLA-compiled step, finite losses.
    import keras
    import tensorflow as tf

    from epsresnet_tf import layers as L

    cfg = resolve_config(
        {
            "arch": "cifar-basic-8",
            "epochs": 2,
            "batch_size": 8,
            "val_steps": 0,
            "histogram_every": 0,
            "epsilon": 0.5,
            "mixed_precision": True,
            "xla": True,
            "lr_schedule": [[0, 0.02]],
        }
    )
    try:
        result = run_training(
            cfg,
            tmp_path / "gpu-settings",
            sources=(_Synthetic(), None),
            strategy=tf.distribute.get_strategy(),
            verbose=0,
        )
        assert result["status"] == "done"
        rows = result["history"]
        assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
        model = keras.saving.load_model(tmp_path / "gpu-settings" / "model.keras")
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs and all(c.compute_dtype == "float16" for c in convs)
        gates = [g for g in L.gate_layers(model) if isinstance(g, L.EpsilonGate)]
        # the gate computes T in float32 (test_layers checks the arithmetic); its ε and
        # monitors are float32 variables, and they moved during the mixed-precision run
        assert gates and all(g.epsilon.dtype == g.gate_value.dtype == "float32" for g in gates)
        assert all(
            np.isfinite(float(g.response_max.numpy())) and float(g.response_max.numpy()) > 0
            for g in gates
        )
        assert model.get_layer("logits").compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- epochs as tensorpack counted them (docs/semantics.md §6) -------------------


class Counted:
    """Batches that say which pass and index they are: image value = 100·pass + index."""

    image_shape, num_batches = (1, 1, 1), 3

    def batches(self, data_pass):
        for i in range(self.num_batches):
            yield np.full((2, 1, 1, 1), 100 * data_pass + i, np.float32), np.zeros(2, np.int32)

    def normalise_np(self, x):
        return x


def stream(start, end, steps):
    from epsresnet_tf.train.loop import epochs_dataset

    return [int(x[0, 0, 0, 0]) for x, _ in epochs_dataset(Counted(), start, end, steps, 2)]


def test_epochs_are_cut_from_one_stream_of_passes():
    # 2 GPUs × per-GPU batch: an epoch of dataflow.size() = 6 steps is two passes
    assert stream(0, 2, 6) == [0, 1, 2, 100, 101, 102, 200, 201, 202, 300, 301, 302]
    # a resumed run (start at epoch 1) sees what the uninterrupted one saw
    assert stream(1, 2, 6) == stream(0, 2, 6)[6:]
    # epochs shorter than a pass continue the stream (tensorpack's repeated dataflow)
    assert stream(0, 3, 2) == [0, 1, 2, 100, 101, 102]
    assert stream(2, 3, 2) == [101, 102]


def test_epoch_steps_count_one_batch_per_gpu_per_step():
    from epsresnet_tf.runconfig import DataSection
    from epsresnet_tf.train.loop import epoch_steps

    class Split:
        shard_size, num_batches = 50000, 50000 // 256  # built with the global batch

    cifar = DataSection(steps_per_epoch=None, batch_per="replica", batch_size=128)
    # tensorpack: dataflow.size() = 50000 // 128 steps, whatever the GPU count
    assert epoch_steps(cifar, Split(), 1) == epoch_steps(cifar, Split(), 2) == 390
    imagenet = DataSection(steps_per_epoch=5000, batch_per="total", batch_size=256)
    assert epoch_steps(imagenet, Split(), 4) == 5000
    total = DataSection(steps_per_epoch=None, batch_per="total", batch_size=256)
    assert epoch_steps(total, Split(), 4) == Split.num_batches


@pytest.mark.parametrize("ghost_bn", [True, False])
def test_gate_group_reaches_the_gates_and_batchnorm(tmp_path, ghost_bn):
    import keras
    import tensorflow as tf

    from epsresnet_tf import layers as L

    cfg = resolve_config(
        {
            "arch": "cifar-basic-8",
            "epochs": 1,
            "batch_size": 8,
            "val_steps": 0,
            "histogram_every": 0,
            "epsilon": 0.5,
            "gate_group": 4,
            "ghost_bn": ghost_bn,
            "lr_schedule": [[0, 0.02]],
        }
    )
    result = run_training(
        cfg,
        tmp_path / "groups",
        sources=(_Synthetic(), None),
        strategy=tf.distribute.get_strategy(),
        verbose=0,
    )
    assert result["status"] == "done"
    model = keras.saving.load_model(tmp_path / "groups" / "model.keras")
    gates = [g for g in L.gate_layers(model) if isinstance(g, L.EpsilonGate)]
    bns = [b for b in model.layers if isinstance(b, L.FusedBatchNormalization)]
    assert gates and all(g.group_size == 4 for g in gates)
    assert bns and all(b.group_size == (4 if ghost_bn else None) for b in bns)
