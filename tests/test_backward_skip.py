"""The backward skip of discarded blocks (train/skip.py): a block whose T is 0 in a step
costs no backward pass, and nothing changes — gradients, weights, optimizer slots,
monitors, history and checkpoints are bit-identical with the skip on and off."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from epsresnet_tf import recipes  # noqa: E402
from epsresnet_tf.config import resolve_config  # noqa: E402
from epsresnet_tf.layers import gate_layers  # noqa: E402
from epsresnet_tf.models import build_model  # noqa: E402
from epsresnet_tf.runfolder import RunFolder  # noqa: E402
from epsresnet_tf.train.skip import BranchSkip, skippable_branches  # noqa: E402
from epsresnet_tf.transform import branch_layers  # noqa: E402

SHAPE = (16, 16, 3)


def _net(arch="cifar-basic-14", **options):
    keras.utils.set_random_seed(0)
    options = {"gate": "eps", "epsilon": 2.5, **options}
    return build_model(arch, classes=10, input_shape=SHAPE, **options)


def _close(net, every=2):
    """Close every `every`-th gate (ε huge: T = 0 on any data); the closed indices."""
    closed = list(range(0, len(gate_layers(net)), every))
    for i in closed:
        gate_layers(net)[i].epsilon.assign(1e9)
    return closed


def _step_grads(net, skip, x, y):
    """(loss, gradients, non-trainable state after) of one training step from the net's
    current state; the state is put back afterwards."""
    saved = [v.numpy() for v in net.non_trainable_variables]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = skip(x, training=True) if skip is not None else net(x, training=True)
            out = out["logits"] if isinstance(out, dict) else out
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    y, tf.cast(out, "float32"), from_logits=True
                )
            )
            loss = loss + tf.add_n(net.losses)
        grads = tape.gradient(loss, net.trainable_variables)
        return loss, [
            tf.zeros_like(v) if g is None else g for g, v in zip(grads, net.trainable_variables)
        ]

    loss, grads = step(x, y)
    after = [v.numpy() for v in net.non_trainable_variables]
    for v, a in zip(net.non_trainable_variables, saved):
        v.assign(a)
    return float(loss), [g.numpy() for g in grads], after


def _bits(arrays):
    return [a.tobytes() for a in arrays]


def _batch(n=16):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(n, *SHAPE)).astype(np.float32) * 3)
    y = tf.constant(rng.integers(0, 10, n).astype(np.int32))
    return x, y


@pytest.mark.parametrize(
    "options",
    [
        {},  # batch scope, the authors'
        {"gate_scope": "sample"},
        {"gate_group": 4},  # virtual towers: skip only when every group's T is 0
    ],
    ids=["batch", "sample", "groups"],
)
def test_gradients_are_bit_identical_with_and_without_the_skip(options):
    net = _net(**options)
    closed = _close(net)
    skip = BranchSkip(net)
    assert len(skip.branches) == len(gate_layers(net)) and not skip.exempt
    x, y = _batch()
    off = _step_grads(net, None, x, y)
    on = _step_grads(net, skip, x, y)
    assert off[0] == on[0]
    assert _bits(off[1]) == _bits(on[1])  # every gradient, bit for bit
    assert _bits(off[2]) == _bits(on[2])  # BN moving statistics and gate monitors
    # the closed blocks' branch weights got no gradient but their weight decay's
    names = [v.path for v in net.trainable_variables]
    gates = gate_layers(net)
    decay = 2e-4
    for i in closed:
        prefix = gates[i].name.replace("eps_gate", "conv2")
        k = names.index(prefix + "/kernel")
        np.testing.assert_allclose(
            on[1][k], decay * net.trainable_variables[k].numpy(), rtol=1e-6, atol=0
        )
    # an open block's branch weights did get more than their decay
    opened = next(i for i in range(len(gates)) if i not in closed)
    k = names.index(gates[opened].name.replace("eps_gate", "conv2") + "/kernel")
    assert not np.allclose(on[1][k], decay * net.trainable_variables[k].numpy())


def test_bf16_gradients_are_bit_identical_with_and_without_the_skip():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = _net()
        _close(net)
        skip = BranchSkip(net)
        x, y = _batch()
        off, on = _step_grads(net, None, x, y), _step_grads(net, skip, x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert off[0] == on[0] and _bits(off[1]) == _bits(on[1]) and _bits(off[2]) == _bits(on[2])


def test_the_branches_are_the_graphs_branches():
    """The skipped part of each unit is the branch the transform reads from the graph
    (transform.branch_layers) plus the gate, and reads only the unit's input."""
    net = _net()
    branches, exempt = skippable_branches(net)
    assert not exempt
    expected = branch_layers(net)
    for block, branch in branches.items():
        layers = [n.operation.name for n in branch.nodes]
        assert layers[-1] == branch.gate.name
        assert sorted(layers[:-1]) == sorted(layer.name for layer in expected[block])
        assert len(branch.entries) == 1  # the unit's input (or its shared pre-activation)


def test_what_cannot_skip_exactly_is_left_alone_and_said():
    # the side head reads unit 3's output (blocks.side_head_index), which unit 4 reads:
    # three consumers, their gradients summed in another order
    net = _net(side_head=True)
    skip = BranchSkip(net)
    assert list(skip.exempt) == ["group2/block0"] and "side head" in skip.exempt["group2/block0"]
    assert len(skip.branches) == 5
    # ShaResNet: a kernel shared by the stage's blocks sums their gradients
    net = _net(share=True)
    skip = BranchSkip(net)
    assert not skip.branches and all("shared" in why for why in skip.exempt.values())
    # the k gate is not an ε-gate; gate_gradient=True differentiates T
    net = _net(gate="k")
    assert all("not an ε-gate" in why for why in BranchSkip(net).exempt.values())
    net = _net()
    gate_layers(net)[0].gate_gradient = True
    assert "gate_gradient=True" in BranchSkip(net).exempt["group0/block0"]


def test_the_run_says_where_the_skip_is_off():
    from epsresnet_tf.train.model import TrainingModel

    assert TrainingModel(_net()).backward_skip_note() is None
    # one block kept for a rounding (the side head's): the docs say it, not every run
    assert TrainingModel(_net(side_head=True)).backward_skip_note() is None
    note = TrainingModel(_net(gate="k")).backward_skip_note()
    assert note.startswith("backward skip: off for 6 of 6 blocks") and "not an ε-gate" in note
    note = TrainingModel(_net(share=True)).backward_skip_note()
    assert note.startswith("backward skip: off for 6 of 6 blocks") and "ShaResNet" in note
    off = TrainingModel(_net(), backward_skip=False)
    assert off.skip is None and "backward_skip=false" in off.backward_skip_note()


def test_xla_runs_keep_the_backward_and_say_why():
    """XLA fuses the step differently around the skip's conditional (a 20-step demo run
    differed from the same run without it), so --xla turns it off, in one line."""
    from epsresnet_tf.runconfig import RunConfig
    from epsresnet_tf.train.model import TrainingModel, skip_setting

    _, cfg = recipes.resolve("demo")
    assert skip_setting(RunConfig.of(resolve_config(cfg))) is True
    why = skip_setting(RunConfig.of(resolve_config(dict(cfg, xla=True))))
    assert why.startswith("--xla")
    assert skip_setting(RunConfig.of(resolve_config(dict(cfg, backward_skip=False)))) == (
        "backward_skip=false"
    )
    model = TrainingModel(_net(), backward_skip=why)
    assert model.skip is None and model.backward_skip_note().startswith("backward skip: off (--xla")
    assert TrainingModel(_net(gate="none")).backward_skip_note() is None


def _demo_run(tmp_path, skip, **overrides):
    from epsresnet_tf.train.loop import run_training

    _, cfg = recipes.resolve("demo")
    cfg = resolve_config(dict(cfg, backward_skip=skip, histogram_every=0, **overrides))
    return run_training(cfg, tmp_path / str(skip), "no-data-folder-needed", verbose=0)


def _same_runs(a, b):
    """Checkpoints (every variable: weights, optimizer slots, monitors) and history of two
    run folders, bit for bit."""
    (va, sa), (vb, sb) = RunFolder(a).load_latest(), RunFolder(b).load_latest()
    assert len(va) == len(vb) and _bits(va) == _bits(vb)
    assert sa["history"] == sb["history"] and sa["epoch"] == sb["epoch"]
    rows = lambda run: [  # noqa: E731 - history.jsonl without the wall times
        {k: v for k, v in json.loads(line).items() if "time" not in k}
        for line in (run / "history.jsonl").read_text().splitlines()
    ]
    assert rows(a) == rows(b)


def test_the_demo_trains_bit_identically_with_and_without_the_skip(tmp_path):
    """One epoch of `make demo` at float32 (blocks go within it): the same run either way."""
    on = _demo_run(tmp_path, True, epochs=1)
    off = _demo_run(tmp_path, False, epochs=1)
    assert on["history"][-1]["discarded_count"] >= 2  # blocks were discarded: skips ran
    _same_runs(tmp_path / "True", tmp_path / "False")
    assert on["history"] == off["history"]


@pytest.mark.slow  # 2 × 3 demo epochs in bf16: ~1 minute on 2 cores
def test_the_demo_in_bf16_trains_bit_identically(tmp_path):
    on = _demo_run(tmp_path, True, epochs=3, precision="bf16")
    _demo_run(tmp_path, False, epochs=3, precision="bf16")
    assert on["history"][-1]["discarded_count"] >= 2
    _same_runs(tmp_path / "True", tmp_path / "False")


@pytest.mark.slow  # 2 × 2 CIFAR-subset epochs of ResNet-20: ~1.5 minutes on 2 cores
def test_a_cifar_subset_run_trains_bit_identically(tmp_path, shared_data):
    from epsresnet_tf.train.loop import run_training

    base = {
        "arch": "cifar-basic-20",
        "epochs": 2,
        "steps_per_epoch": 40,
        "batch_size": 32,
        "val_steps": 2,
        # max |F| is 6-20 here in the first 80 steps: at ε = 10 two or three of the 9
        # blocks go, and some come back (the skip switches on and off within the run)
        "epsilon": 10.0,
        "lr_schedule": [[0, 0.1]],
        "histogram_every": 0,
    }
    results = {}
    for skip in (True, False):
        cfg = resolve_config(dict(base, backward_skip=skip))
        results[skip] = run_training(
            cfg, tmp_path / str(skip), shared_data / "cifar10-subset", verbose=0
        )
    assert results[True]["history"][-1]["discarded_count"] > 1
    _same_runs(tmp_path / "True", tmp_path / "False")


def _cli_run(out, *flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    argv = ["train", "demo", "--cpu-devices", "2", "--quiet", "--val-steps", "0", *flags]
    proc = subprocess.run(
        [sys.executable, "-m", "epsresnet_tf.cli", *argv, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow  # 4 demo runs on 2 logical devices: ~2 minutes on 2 cores
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_two_replicas_train_bit_identically(tmp_path, precision):
    """MirroredStrategy over 2 logical CPUs: each replica decides its own T, so a block can
    skip on one replica and not on the other in the same step; still the same run."""
    flags = ("--epochs", "2", "--precision", precision, "--set", "histogram_every=0")
    out_on = _cli_run(tmp_path / "on", *flags)
    _cli_run(tmp_path / "off", *flags, "--set", "backward_skip=false")
    assert "backward skip" not in out_on  # on: only the side head's unit keeps its backward
    (a,), (b,) = glob.glob(str(tmp_path / "on" / "*")), glob.glob(str(tmp_path / "off" / "*"))
    from pathlib import Path

    a, b = Path(a), Path(b)
    assert json.loads((a / "config.json").read_text())["backward_skip"] is True
    assert json.loads((b / "config.json").read_text())["backward_skip"] is False
    rows = [json.loads(x) for x in (a / "history.jsonl").read_text().splitlines()]
    assert rows[-1]["discarded_count"] >= 2
    _same_runs(a, b)
