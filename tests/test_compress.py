"""Certified compression: verdicts against direct gate computations, reduced nets that give
the trained net's predictions (middle unit, a group's first unit, shared kernels, k-gates,
bottleneck projections), the EMA rule's disagreements, exports, and the CLI."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsresnet_tf import cli
from epsresnet_tf import compress as C
from epsresnet_tf.config import resolve_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import eps as E
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.layers import EpsilonGate, gate_layers
from epsresnet_tf.models import build_model
from epsresnet_tf.naming import parse_block_id
from epsresnet_tf.runfolder import load_model, read_run

SHAPE = (16, 16, 3)
HUGE = 1e6  # ε above every |F|: T = 0 for every input


def gates(model):
    return {gate_by_block(model)[b].name: l for b, l in gate_by_block(model).items()}


def gate_of(model, bid):
    return gate_by_block(model)[bid]


def batches(n=48, batch=16, seed=0, shape=SHAPE):
    x = np.random.RandomState(seed).randn(n, *shape).astype("float32")
    return [x[i : i + batch] for i in range(0, n, batch)]


def close(model, *ids):
    for bid in ids:
        layer = gate_of(model, bid)
        if isinstance(layer, EpsilonGate):
            layer.epsilon.assign(HUGE)
        else:
            layer.k.assign(-0.25)


def logits(model, x):
    return np.asarray(C.logits_of(model(x, training=False)))


def build(arch="cifar-basic-14", **kw):
    opts = dict(classes=10, input_shape=SHAPE, gate="eps", epsilon=0.0)
    opts.update(kw)
    return build_model(arch, **opts), opts


def train_briefly(model, data, steps=6):
    """A few SGD steps (training mode): the gates' EMAs move and kernels change."""
    opt = keras.optimizers.SGD(0.05, momentum=0.9)
    y = tf.zeros((len(data[0]),), tf.int32)
    for i in range(steps):
        with tf.GradientTape() as tape:
            out = C.logits_of(model(data[i % len(data)], training=True))
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
            )
            loss += tf.add_n(model.losses)
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)


# --- the certificate against direct computations ------------------------------------------


def test_batch_and_image_gates_equal_the_layers_own_gate_on_the_batch():
    model, _ = build()
    data = batches()
    probe = keras.Model(model.inputs, [l.input for l in gate_layers(model)])
    layer = gate_layers(model)[3]
    resp, sizes = E.gate_responses(model, data)
    bid = "group1/block1"
    assert gate_by_block(model)[bid] is layer
    # ε between the smallest and largest per-image max |F|: some images open, some closed
    layer.epsilon.assign(float(np.median(resp[bid])))
    per_image = E.per_image_gate(layer, resp[bid])
    assert 0 < per_image.sum() < len(per_image)
    batch_t = E.batch_gate(per_image, sizes)
    for i, x in enumerate(data):
        f = tf.cast(probe(x, training=False)[3], tf.float32)
        assert float(layer.gate(f)) == batch_t[i]  # batch scope
        sample = EpsilonGate(float(layer.epsilon.numpy()), scope="sample")
        sample.build(f.shape)
        sample.epsilon.assign(layer.epsilon)
        direct = np.asarray(sample.gate(f)).reshape(-1)  # sample scope
        np.testing.assert_array_equal(direct, per_image[i * 16 : (i + 1) * 16])


def test_verdicts_closed_open_mixed_and_k():
    model, _ = build()
    data = {"train": batches(seed=1), "test": batches(seed=2)}
    close(model, "group0/block1")
    resp, _ = E.gate_responses(model, data["test"])
    gate_of(model, "group2/block0").epsilon.assign(float(np.median(resp["group2/block0"])))
    cert = C.certify(model, data, batch_size=16)
    v = cert.blocks
    assert v["group0/block1"].verdict == "closed" and v["group0/block1"].details["images_open"] == 0
    assert v["group2/block0"].verdict in ("open", "mixed")
    assert v["group2/block0"].details["images_open"] > 0
    assert v["group0/block0"].verdict == "open"
    assert cert.closed == ["group0/block1"]
    assert cert.images == {"train": 48, "test": 48}
    # one image per batch: the median ε closes about half the batches → mixed
    per_image = C.certify(model, {"test": [x[None] for x in data["test"][0]]}, batch_size=1)
    assert per_image.blocks["group2/block0"].verdict == "mixed"

    kmodel, _ = build(gate="k")
    gate_of(kmodel, "group1/block1").k.assign(0.0)
    gate_of(kmodel, "group2/block1").k.assign(-3.0)
    kcert = C.certify(kmodel, {})
    assert kcert.closed == ["group1/block1", "group2/block1"]
    assert kcert.blocks["group0/block0"].details["g"] == 1.0


# --- reduced nets give the trained net's predictions -------------------------------------


def _compress(tmp_path, model, opts, arch="cifar-basic-14", data=None, **kw):
    data = data or batches(seed=3)
    return C.compress_model(
        model,
        arch,
        opts,
        C.CompressData({"train": batches(seed=4), "test": data}, data, batch_size=16),
        tmp_path / "reduced",
        C.CompressOptions(export=kw.pop("export", False), **kw),
    )


def test_trained_eps_net_middle_and_first_units_removed(tmp_path):
    model, opts = build(side_head=True)
    close(model, "group0/block1", "group1/block0", "group2/block1")
    data = batches(seed=5)
    train_briefly(model, data)
    # the closed blocks' EMAs moved towards 1 during training, the others stayed at 0
    assert gate_of(model, "group1/block0").discarded_ema.numpy() > 0.2
    assert gate_of(model, "group0/block0").discarded_ema.numpy() == 0.0
    doc = _compress(tmp_path, model, opts, data=data, export=True)
    assert doc["removed"] == ["group0/block1", "group1/block0", "group2/block1"]
    assert doc["blocks_per_group_after"] == [1, 1, 1] and doc["first_removed_groups"] == [1]
    assert doc["renumbered"]["group1/block1"] == "group1/block0"
    assert doc["equivalence"]["passed"] and doc["equivalence"]["max_abs_logit_diff"] <= 1e-5
    assert doc["equivalence"]["same_top1"] == 48
    assert doc["after"]["trainable_params"] < doc["before"]["trainable_params"]
    assert doc["after"]["layers"] == 14 - 2 * 3 and doc["before"]["layers"] == 14
    assert doc["reduced_gates"] == "none"  # every kept gate open: a standard ResNet
    # the exports reload and predict as the trained net
    out = tmp_path / "reduced"
    saved = json.loads((out / "certificate.json").read_text())
    assert saved["removed"] == doc["removed"]
    reloaded = keras.models.load_model(out / "reduced.keras")
    assert not gate_layers(reloaded)
    assert "group1_transition_shortcut_pool_pad" in [l.name for l in reloaded.layers]
    x = data[0]
    np.testing.assert_allclose(logits(reloaded, x), logits(model, x), atol=1e-5, rtol=0)
    loaded = tf.saved_model.load(str(out / "saved_model"))  # keep it: serve needs its variables
    served = loaded.serve(x)
    np.testing.assert_allclose(np.asarray(served), logits(model, x), atol=1e-5, rtol=0)
    # independent parameter count: the same layout built from scratch
    plain = build_model(
        "cifar-basic-14",
        classes=10,
        input_shape=SHAPE,
        blocks_per_group=[1, 1, 1],
        first_removed=(1,),
    )
    assert doc["after"]["trainable_params"] == sum(
        int(np.prod(w.shape)) for w in plain.trainable_weights
    )


def test_shared_kernel_stays_while_a_unit_uses_it_and_goes_with_the_last(tmp_path):
    model, opts = build(share=True)
    close(model, "group0/block0", "group1/block1", "group2/block0", "group2/block1")
    data = batches(seed=6)
    train_briefly(model, data, steps=3)
    reduced, info = C.reduce(
        model,
        "cifar-basic-14",
        opts,
        ["group0/block0", "group1/block1", "group2/block0", "group2/block1"],
    )
    names = {l.name: l for l in reduced.layers}
    assert info["blocks_per_group_after"] == [1, 1, 0]
    np.testing.assert_array_equal(
        names["group0_shared_conv3x3"].kernel.numpy(),
        model.get_layer("group0_shared_conv3x3").kernel.numpy(),
    )
    assert "group1_shared_conv3x3" in names and "group2_shared_conv3x3" not in names
    assert "group2_transition_shortcut_pool_pad" in names
    for x in data:
        np.testing.assert_allclose(logits(reduced, x), logits(model, x), atol=1e-5, rtol=0)
    # the certificate-driven path agrees
    doc = _compress(tmp_path, model, opts, data=data)
    assert doc["equivalence"]["passed"] and doc["blocks_after"] == 2


def test_k_gated_net_folds_k_or_keeps_the_gate_under_a_shared_kernel(tmp_path):
    model, opts = build(gate="k")
    close(model, "group0/block0", "group2/block1")
    gate_of(model, "group1/block0").k.assign(0.37)  # a kept gate that scales its branch
    data = batches(seed=7)
    doc = _compress(tmp_path, model, opts, data=data)
    assert doc["removed"] == ["group0/block0", "group2/block1"]
    assert doc["reduced_gates"] == "none" and "group1/block0" in doc["folded_k"]
    assert doc["equivalence"]["passed"]
    assert doc["after"]["trainable_params"] < doc["before"]["trainable_params"]

    shared, sopts = build(gate="k", share=True)
    close(shared, "group1/block1")
    gate_of(shared, "group0/block1").k.assign(2.5)
    reduced, info = C.reduce(shared, "cifar-basic-14", sopts, ["group1/block1"])
    assert info["reduced_gates"] == "k"  # g(k) cannot fold into a shared kernel
    for x in data:
        np.testing.assert_allclose(logits(reduced, x), logits(shared, x), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="not exact"):
        C.reduce(shared, "cifar-basic-14", sopts, ["group1/block1"], gates="none")


def test_bottleneck_projection_transitions_with_and_without_preactivation(tmp_path):
    model, opts = build("cifar-bottleneck-20")  # 2 units per group, projections
    close(model, "group0/block0", "group1/block0", "group2/block1")
    data = batches(seed=8)
    doc = _compress(tmp_path, model, opts, arch="cifar-bottleneck-20", data=data)
    assert doc["first_removed_groups"] == [0, 1]
    assert doc["equivalence"]["passed"]
    reduced, _ = C.reduce(model, "cifar-bottleneck-20", opts, doc["removed"])
    names = [l.name for l in reduced.layers]
    assert "group0_transition_shortcut_conv" in names and "group0_transition_preact_bn" not in names
    assert "group1_transition_preact_bn" in names
    np.testing.assert_array_equal(
        reduced.get_layer("group1_transition_shortcut_conv").kernel.numpy(),
        model.get_layer("group1_block0_shortcut_conv").kernel.numpy(),
    )


def test_mixed_gates_are_kept_so_the_reduced_net_stays_exact(tmp_path):
    model, opts = build()
    close(model, "group0/block1")
    one = [x[None] for x in batches(n=12, seed=9)[0]]  # batch 1: per-image batch gates
    resp, _ = E.gate_responses(model, one)
    gate_of(model, "group1/block1").epsilon.assign(float(np.median(resp["group1/block1"])))
    doc = C.compress_model(
        model,
        "cifar-basic-14",
        opts,
        C.CompressData({"test": one}, one, batch_size=1),
        tmp_path / "r",
        C.CompressOptions(export=False),
    )
    assert doc["blocks"]["group1/block1"]["verdict"] == "mixed"
    assert doc["reduced_gates"] == "eps" and doc["equivalence"]["passed"]
    with pytest.raises(UserError, match="not exact"):
        C.reduce(
            model,
            "cifar-basic-14",
            opts,
            ["group0/block1"],
            gates="none",
            certificate=C.certify(model, {"test": one}, batch_size=1),
        )


def test_ema_rule_disagreements_and_an_unsafe_removal_is_caught(tmp_path):
    model, opts = build()
    close(model, "group0/block1")  # closed, EMA still 0
    gate_of(model, "group2/block0").discarded_ema.assign(1.0)  # EMA says gone, gate open
    data = batches(seed=10)
    doc = _compress(tmp_path, model, opts, data=data, rule="ema")
    dis = doc["ema_rule"]["disagreements"]
    assert dis == {"ema_only": ["group2/block0"], "certificate_only": ["group0/block1"]}
    assert doc["removed"] == ["group2/block0"]
    # removing an open block changes predictions: the check says so
    assert not doc["equivalence"]["passed"] and doc["equivalence"]["max_abs_logit_diff"] > 1e-5
    assert doc["disagreements"] == dis and doc["reduced_gates"] == "none"  # the authors' plain net
    # both nets were built and checked: the certified one is exact, the EMA one is not
    assert doc["rules"]["certificate"]["removed"] == ["group0/block1"]
    assert doc["rules"]["certificate"]["identical_predictions"]
    assert doc["rules"]["ema"]["removed"] == ["group2/block0"]
    assert not doc["rules"]["ema"]["identical_predictions"]


def test_ema_threshold_is_the_authors_printed_1_at_5_significant_digits():
    assert C.EMA_THRESHOLD == 0.999995 and C.EMA_DIGITS == 5
    emas = {
        "group0/block0": {"discarded": 0.999994},
        "group0/block1": 0.999995,
        "group1/block0": {"discarded": 0.9999949},
        "group1/block1": 1.0,
        "group2/block0": 0.9995,
    }
    assert C.ema_removable(emas) == ["group0/block1", "group1/block1"]
    assert C.printed_as_authors(0.999994) == "0.99999" and C.printed_as_authors(1.0) == "1"
    # The monitor value is a float32: on every float32 of [0.999, 1] the threshold says what
    # the authors' log said ('{:.5g}' reads 1), both sides of the boundary included.
    lo, hi = np.float32(0.999), np.float32(1.0)
    v = np.arange(lo.view(np.int32), hi.view(np.int32) + 1, dtype=np.int32).view(np.float32)
    printed_one = np.array([C.printed_as_authors(x) == "1" for x in v])
    np.testing.assert_array_equal(printed_one, v.astype(np.float64) >= C.EMA_THRESHOLD)
    assert 0 < printed_one.sum() < len(v)
    below = np.float32(0.999995)  # the float32 nearest: 0.99999493…
    assert C.ema_removable({"group0/block0": float(below)}) == []
    assert C.ema_removable({"group0/block0": float(np.nextafter(below, np.float32(2)))}) == [
        "group0/block0"
    ]


def test_refuses_to_overwrite_and_names_bad_blocks(tmp_path):
    model, opts = build()
    (tmp_path / "reduced").mkdir()
    (tmp_path / "reduced" / "certificate.json").write_text("{}")
    with pytest.raises(UserError, match="--force"):
        _compress(tmp_path, model, opts)
    with pytest.raises(UserError, match="not in the model"):
        C.reduce(model, "cifar-basic-14", opts, ["group5/block0"])
    with pytest.raises(UserError, match="group<g>/block<b>"):
        C.reduce(model, "cifar-basic-14", opts, ["g0b1"])


# --- a run folder through the CLI --------------------------------------------------------


@pytest.fixture(scope="module")
def eps_run(tmp_path_factory, shared_data):
    """A run folder written by the training loop (3 steps, ε = 2.5), then two blocks closed
    by hand in its model.keras so the outcome is known: the CLI path is what is tested."""
    loop = pytest.importorskip("epsresnet_tf.train.loop")
    cfg = resolve_config(
        {
            "arch": "cifar-basic-14",
            "epochs": 1,
            "batch_size": 32,
            "steps_per_epoch": 3,
            "val_steps": 1,
            "epsilon": 2.5,
            "lr_schedule": [[0, 0.05]],
        }
    )
    run_dir = tmp_path_factory.mktemp("runs") / "c10"
    loop.run_training(cfg, run_dir, shared_data / "cifar10-subset", verbose=0)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    close(model, "group1/block0", "group2/block1")
    model.save(run_dir / "model.keras")
    return run_dir, shared_data / "cifar10-subset"


def test_compress_cli_on_a_run_folder(eps_run, capsys):
    run_dir, data = eps_run
    args = ["compress", str(run_dir), "--data-dir", str(data), "--max-batches", "2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "passed" in out
    cert = json.loads((run_dir / "reduced" / "certificate.json").read_text())
    assert {"group1/block0", "group2/block1"} <= set(cert["removed"])
    assert cert["certified_on"]["images"] == {"train": 64, "test": 64}
    assert cert["equivalence"]["passed"] and cert["equivalence"]["images"] == 64
    assert cert["equivalence"]["error_full"] == cert["equivalence"]["error_reduced"]
    assert cert["equivalence"]["same_top1"] == 64
    assert (run_dir / "reduced" / "reduced.keras").is_file()
    assert (run_dir / "reduced" / "saved_model" / "saved_model.pb").is_file()
    assert cli.main(args) == 2  # never overwrites
    assert "--force" in capsys.readouterr().err
    assert cli.main(["compress", str(run_dir / "nope"), "--data-dir", str(data)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_evaluate_and_ablate_cli_on_a_run_folder(eps_run, capsys):
    run_dir, data = eps_run
    assert (
        cli.main(
            [
                "evaluate",
                str(run_dir),
                "--data-dir",
                str(data),
                "--max-batches",
                "2",
                "--latency-batches",
                "1,8",
                "--repeats",
                "2",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 256 and 0 <= result["top1_error"] <= 1
    assert result["layers"] == 14 and set(result["latency_per_image_s"]) == {"1", "8"}
    args = [
        "ablate",
        str(run_dir),
        "--data-dir",
        str(data),
        "--order",
        "by-response",
        "--max-batches",
        "1",
        "--max-removals",
        "3",
    ]
    assert cli.main(args) == 0
    doc = json.loads((run_dir / "ablation" / "by-response.json").read_text())
    assert [r["removed"] for r in doc["rows"]] == [0, 1, 2, 3]
    # blocks that add exactly 0 go first (the two closed by hand, and any ε = 2.5 closed
    # in training), and removing them leaves the error unchanged
    from epsresnet_tf import evaluate as E

    run = read_run(run_dir)
    model = load_model(run.model_path)
    contrib = E.block_contributions(model, C.run_datasets(run, data, ("test",), 1)["test"])
    zero = {b for b, v in contrib.items() if v == 0.0}
    assert {"group1/block0", "group2/block1"} <= zero
    first = doc["rows"][1 : 1 + min(3, len(zero))]
    assert all(
        r["block"] in zero and r["top1_error"] == doc["rows"][0]["top1_error"] for r in first
    )
    assert cli.main(args) == 2 and "--force" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run_dir / "missing.keras"), "--data-dir", str(data)]) == 2


# --- the authors' rule at a chosen epoch of a real run -----------------------------------

#: A real tiny run (digits, 8 epochs of 44 steps, ε = 5): some blocks' EMAs pass 0.999995
#: at epoch 6, others stay below; epochs 3 and 6 keep their checkpoints.
EPOCH_RECIPE = {
    "dataset": "digits",
    "arch": "cifar-basic-14",
    "epochs": 8,
    "batch_size": 32,
    "epsilon": 5.0,
    "lr_schedule": [[0, 0.1]],
    "adaptive_schedule": [],
    "val_steps": 0,
    "histogram_every": 0,
    "wd_decay_every": 0,
    "keep_checkpoints_at": [3, 6],
}


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory):
    loop = pytest.importorskip("epsresnet_tf.train.loop")
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    loop.run_training(resolve_config(EPOCH_RECIPE), run_dir, "no-data-folder-needed", verbose=0)
    rows = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    return run_dir, rows


def test_epoch_checkpoints_kept_for_compression(epoch_run):
    run_dir, rows = epoch_run
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    kept = ["epoch-00003", "epoch-00006", "epoch-00007", "epoch-00008"]
    # each checkpoint and its manifest (written last: what makes it valid), nothing else
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == sorted(
        f"{k}.{ext}" for k in kept for ext in ("npz", "json")
    )


def test_compress_ema_rule_at_a_chosen_epoch(epoch_run, tmp_path, capsys):
    run_dir, rows = epoch_run
    epoch = 6
    emas = {b: v["discarded"] for b, v in rows[epoch - 1]["blocks"].items()}  # independent
    expected = sorted(b for b, v in emas.items() if v >= 0.999995)
    assert 0 < len(expected) < len(emas), emas  # the run makes the choice meaningful
    out = tmp_path / "ema6"
    args = [
        "compress",
        str(run_dir),
        "--data-dir",
        "no-data-folder-needed",
        "--rule",
        "ema",
        "--epoch",
        str(epoch),
        "--max-batches",
        "3",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["epoch"] == epoch and cert["weights"] == "ckpt/epoch-00006.npz"
    assert cert["step"] == rows[epoch - 1]["step"]
    assert cert["rule"] == "ema" and cert["removed"] == expected
    assert cert["ema_rule"]["removable"] == expected and cert["ema_rule"]["threshold"] == 0.999995
    # the EMA values are epoch 6's (the checkpoint's gate variables = the history row)
    for b, v in cert["blocks"].items():
        assert v["ema"] == pytest.approx(emas[b], abs=1e-7), b
    per_group = [2, 2, 2]
    for b in expected:
        per_group[parse_block_id(b)[0]] -= 1
    assert cert["blocks_per_group_after"] == per_group
    reduced = keras.models.load_model(out / "reduced.keras", compile=False)
    assert C.block_layout(reduced) == {g: n for g, n in enumerate(per_group) if n}
    assert not gate_layers(reduced)  # the authors' standard ResNet
    # both rules' nets, their test errors and where they disagree
    rules, dis = cert["rules"], cert["disagreements"]
    assert rules["ema"]["removed"] == expected
    cert_removed = rules["certificate"]["removed"]
    assert dis["ema_only"] == sorted(set(expected) - set(cert_removed))
    assert dis["certificate_only"] == sorted(set(cert_removed) - set(expected))
    assert rules["certificate"]["identical_predictions"]
    assert rules["certificate"]["test_error"] == rules["certificate"]["test_error_full"]
    from epsresnet_tf import evaluate as E

    run = read_run(run_dir)
    test = C.run_datasets(run, "no-data-folder-needed", ("test",), 3)["test"]
    independent = E.error_rates(reduced, test)
    assert independent["images"] == rules["ema"]["test_images"] == 96
    assert rules["ema"]["test_error"] == pytest.approx(independent["top1_error"])
    # the epoch-6 weights, not the final ones: the full net's error is the checkpoint's
    net, state = C.load_epoch(run, epoch)
    assert state["epoch"] == epoch
    assert rules["ema"]["test_error_full"] == pytest.approx(E.error_rates(net, test)["top1_error"])
    assert "authors' EMA rule" in printed and "certified" in printed and "test error" in printed


def test_compress_epoch_without_a_kept_checkpoint(epoch_run, capsys):
    run_dir, _ = epoch_run
    args = [
        "compress",
        str(run_dir),
        "--data-dir",
        "no-data-folder-needed",
        "--epoch",
        "4",
        "--out",
        str(run_dir / "never"),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "epoch 4" in err and "kept: 3, 6, 7, 8" in err and "keep_checkpoints_at" in err
    with pytest.raises(UserError, match="--ema-epoch 5 differs"):
        C.compress_run(
            run_dir, "no-data-folder-needed", select=C.RunSelection(epoch=6, ema_epoch=5)
        )
