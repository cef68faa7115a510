"""Deployment (issue 26): an exported net answers an image the same alone as in any batch.
A kept batch-scope ε-gate is decided once from its training statistics (T at the moving
average of max |F|), as BatchNormalization uses its moving statistics; "sample" decides it
per image, "keep" exports the gate as trained and says the answers depend on the batch.
Every check runs at the run's batch and at batch 1."""

import json

import keras
import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf import compress as C
from epsresnet_tf.cli import compress as compress_cli
from epsresnet_tf.gates import eps as E
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.models import build_model

SHAPE = (16, 16, 3)
ARCH = "cifar-basic-14"
MIXED = "group1/block1"  # a middle unit: removable once its branch adds 0
CLOSED = "group0/block1"


def _net(**build):
    opts = dict(classes=10, input_shape=SHAPE, gate="eps", epsilon=0.0, **build)
    return build_model(ARCH, **opts), opts


def _data(n=64, batch=8, seed=3):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, *SHAPE).astype("float32")
    y = rng.randint(0, 10, n)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _mixed_net(response_max=None, steps=100.0, **build):
    """A net whose `MIXED` gate is open on some batches of 8 and closed on others (ε at the
    90th percentile of the per-image max |F|: a batch is closed when its 8 images are),
    `CLOSED` closed everywhere, and the gate's training statistics set: the moving average
    of max |F| (`response_max`, None: left at 0) over `steps` training steps."""
    keras.utils.set_random_seed(7)  # the same net whichever tests ran before
    model, opts = _net(**build)
    data = _data()
    gates = gate_by_block(model)
    gates[CLOSED].epsilon.assign(1e6)
    # the gated branch dominates the logits, so its T shows in the answers
    conv = gates[MIXED]._inbound_nodes[0].input_tensors[0]._keras_history.operation
    conv.kernel.assign(conv.kernel * 30.0)
    resp, _ = E.gate_responses(model, data)
    eps = float(np.quantile(resp[MIXED], 0.9))
    gates[MIXED].epsilon.assign(eps)
    for layer in gates.values():
        layer.monitor_steps.assign(steps)
        layer.response_max.assign(1e3)  # the others: open, far above their ε
    gates[CLOSED].response_max.assign(0.0)
    if response_max is not None:
        gates[MIXED].response_max.assign(response_max(eps))
    return model, opts, data


def _compress(tmp_path, model, opts, data, **options):
    return C.compress_model(
        model,
        ARCH,
        opts,
        C.CompressData({"train": data}, data, batch_size=8),
        tmp_path / "reduced",
        C.CompressOptions(**options),
    )


def _exported(tmp_path):
    return keras.models.load_model(tmp_path / "reduced" / "reduced.keras")


def _logits(net, data, batch):
    x = np.concatenate([b[0] for b in data])
    return np.concatenate(
        [np.asarray(net(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    )


def _labels(data):
    return np.concatenate([b[1] for b in data])


def _assert_batch_independent(net, data):
    """The same top-1 on every image alone, in batches of 8 and all in one batch."""
    one, eight, whole = (_logits(net, data, b) for b in (1, 8, len(_labels(data))))
    np.testing.assert_array_equal(one.argmax(-1), eight.argmax(-1))
    np.testing.assert_array_equal(one.argmax(-1), whole.argmax(-1))
    np.testing.assert_allclose(one, whole, atol=1e-4, rtol=0)
    return one


def test_the_gated_net_depends_on_the_batch_and_the_deployed_one_does_not(tmp_path, capsys):
    """The user's case: a kept gate "mixed" on the certified batches. Kept as trained
    (--gates keep) an image's answer changes with its batch, and compress says so in one
    line; by default the gate is decided once (open: the moving average of max |F| is above
    ε) and the export is a standard ResNet with the same answer alone and in any batch."""
    model, opts, data = _mixed_net(response_max=lambda eps: 2 * eps)
    kept = _compress(tmp_path / "keep", model, opts, data, gates="keep")
    assert kept["blocks"][MIXED]["verdict"] == "mixed"
    assert kept["equivalence"]["passed"] and kept["equivalence"]["batch_1"]["passed"]
    dep = kept["deployment"]
    assert dep["gates"][MIXED]["decision"] == "per batch" and not dep["batch_independent"]
    gated = _exported(tmp_path / "keep")
    one, eight = _logits(gated, data, 1), _logits(gated, data, 8)
    assert np.any(one.argmax(-1) != eight.argmax(-1))  # the batch-scope gate at work
    assert dep["alone_vs_in_batch"]["same_top1"] == int(np.sum(one.argmax(-1) == eight.argmax(-1)))
    assert compress_cli._report_deployment(kept) == 0
    assert "depends on its batch" in capsys.readouterr().out

    doc = _compress(tmp_path / "auto", model, opts, data)
    dep = doc["deployment"]
    assert dep["policy"] == "auto" and dep["gates"][MIXED]["decision"] == "open"
    assert dep["gates"][MIXED]["T"] == 1.0 and "above ε" in dep["gates"][MIXED]["why"]
    assert dep["batch_independent"] and doc["reduced_gates"] == "none"
    net = _exported(tmp_path / "auto")
    assert not [l for l in net.layers if "eps_gate" in l.name]
    alone = _assert_batch_independent(net, data)
    y = _labels(data)
    # the errors in the certificate are the export's and the gated net's, alone and in batches
    assert dep["test_error"]["batch_1"] == pytest.approx(np.mean(alone.argmax(-1) != y))
    assert dep["gated_test_error"]["batch_1"] == pytest.approx(np.mean(one.argmax(-1) != y))
    assert dep["gated_test_error"]["run_batch"] == pytest.approx(np.mean(eight.argmax(-1) != y))
    assert doc["removed"] == [CLOSED] and doc["blocks_after"] == kept["blocks_after"]
    assert compress_cli._report_deployment(doc) == 0
    out = capsys.readouterr().out
    assert "decided once from their training statistics" in out and MIXED in out


def test_a_gate_whose_average_is_below_epsilon_is_removed_for_deployment(tmp_path):
    model, opts, data = _mixed_net(response_max=lambda eps: eps / 2)
    doc = _compress(tmp_path, model, opts, data)
    dep = doc["deployment"]
    assert dep["gates"][MIXED]["decision"] == "removed" and dep["removed"] == [MIXED]
    assert doc["removed"] == [CLOSED]  # the certificate's removals stay the proven ones
    assert doc["blocks_after"] == doc["blocks_before"] - 2 and doc["reduced_gates"] == "none"
    net = _exported(tmp_path)
    assert not [l for l in net.layers if l.name.startswith("group1_block1")]
    _assert_batch_independent(net, data)
    # the certified (gated) net is still the proof: exact at the run's batch and alone
    assert doc["equivalence"]["passed"] and doc["equivalence"]["batch_1"]["passed"]


def test_a_closed_decision_where_the_unit_is_no_identity_scales_the_branch_by_0(tmp_path):
    """He et al.'s constant scaling shortcut (λx, λ ≠ 1): a block decided closed cannot go
    (its unit still maps x), so its branch is multiplied by T = 0 in the export."""
    model, opts, data = _mixed_net(response_max=lambda eps: eps / 2, shortcut="constant_scaling")
    doc = _compress(tmp_path, model, opts, data)
    d = doc["deployment"]["gates"][MIXED]
    assert d["decision"] == "scaled" and d["T"] == 0.0 and "scaled by 0" in d["why"]
    assert doc["deployment"]["removed"] == [] and doc["reduced_gates"] == "eps"
    net = _exported(tmp_path)
    _assert_batch_independent(net, data)
    # T = 0: the unit is its scaled shortcut alone, whatever the branch computes
    probe = keras.Model(net.inputs, net.get_layer(f"{MIXED.replace('/', '_')}_add").input)
    x = np.concatenate([b[0] for b in data])
    branch, _ = (np.asarray(t) for t in probe(x, training=False))
    assert not branch.any()


@pytest.mark.slow  # four compressions: ~35 s on 2 cores
def test_per_image_decisions_equal_the_gated_net_fed_one_image_at_a_time(tmp_path):
    """`--gates sample`, and a gate with no training statistics under "auto": T per image,
    which is the batch-scope gate at batch 1 — in every batch."""
    for options, where in ((dict(gates="sample"), "sample"), ({}, "untrained")):
        steps = 0.0 if where == "untrained" else 100.0
        model, opts, data = _mixed_net(response_max=lambda eps: 2 * eps, steps=steps)
        _compress(tmp_path / f"{where}-keep", model, opts, data, gates="keep")
        gated_alone = _logits(_exported(tmp_path / f"{where}-keep"), data, 1)
        doc = _compress(tmp_path / where, model, opts, data, **options)
        d = doc["deployment"]["gates"][MIXED]
        assert d["decision"] == "per image" and d["T"] is None
        assert ("never trained" in d["why"]) == (where == "untrained")
        net = _exported(tmp_path / where)
        in_batches = _logits(net, data, 8)
        np.testing.assert_allclose(in_batches, gated_alone, atol=1e-5, rtol=0)
        _assert_batch_independent(net, data)


def test_every_gate_open_on_the_certified_data_needs_no_decision(tmp_path):
    """The gates already open on every certified batch: the certified net is the standard
    ResNet, exact, and nothing is decided."""
    model, opts = _net()
    gate_by_block(model)[CLOSED].epsilon.assign(1e6)
    data = _data()
    doc = _compress(tmp_path, model, opts, data)
    assert doc["deployment"]["gates"] == {} and doc["deployment"]["batch_independent"]
    assert doc["reduced_gates"] == "none" and doc["equivalence"]["passed"]


def test_rebatched_keeps_the_images_their_order_and_labels():
    data = _data(n=20, batch=8)
    for size, limit in ((1, None), (3, None), (None, None), (1, 5), (3, 7)):
        items = list(C.rebatched(data, size, limit))
        x = np.concatenate([i[0] for i in items])
        y = np.concatenate([i[1] for i in items])
        n = 20 if limit is None else limit
        np.testing.assert_array_equal(x, np.concatenate([b[0] for b in data])[:n])
        np.testing.assert_array_equal(y, _labels(data)[:n])
        assert all(len(i[0]) <= (size or 8) for i in items)


def test_the_cli_reports_the_deployment_and_checks_at_batch_1(tmp_path, capsys):
    """`epsresnet compress RUN` on a digits run folder whose kept gate is mixed: one line per
    decided gate that is news, the errors alone and in batches, the equivalence at both
    batches, and --client-images bounding the batch-1 checks."""
    from epsresnet_tf.runfolder import read_run

    root = tmp_path / "run"
    root.mkdir()
    config = {"arch": "cifar-basic-8", "dataset": "digits", "gate": "eps", "epsilon": 2.5}
    (root / "config.json").write_text(json.dumps({**config, "batch_size": 32}))
    run = read_run(root)
    net = build_model(run.arch, **run.build_options)
    for bid, gate in gate_by_block(net).items():
        gate.epsilon.assign(1e6 if bid == "group1/block0" else 0.0)
        gate.monitor_steps.assign(10.0)
        gate.response_max.assign(1.0)
    net.save(root / "model.keras")
    argv = ["compress", str(root), "--data-dir", "unused", "--max-batches", "2"]
    assert cli.main(argv + ["--client-images", "10"]) == 0
    out = capsys.readouterr().out
    assert "in the run's batches and 10 one at a time" in out
    cert = json.loads((root / "reduced" / "certificate.json").read_text())
    assert cert["equivalence"]["batch_1"]["images"] == 10
    assert cert["deployment"]["images"] == {"batch_1": 10, "run_batch": 64}


def test_the_report_puts_the_error_alone_beside_the_gated_nets():
    from epsresnet_tf.report.tables import _MAIN_HEADERS, _main_table

    row = {"run": "r", "arch": ARCH, "error_full": 0.0361, "error_reduced": 0.0361}
    decided = dict(row, error_deployed_alone=0.0361, error_gated_alone=0.0833)
    cells = _main_table([decided, dict(row, error_deployed_alone=0.05), row])
    column = _MAIN_HEADERS.index("error exported, one image at a time")
    assert [c[column] for c in cells] == ["3.61% (gated 8.33%)", "5.00%", "n/a"]


@pytest.mark.slow  # 80 steps of ResNet-20 on the CIFAR-10 subset, compress, report: ~1.5 min
def test_a_cifar_subset_run_with_kept_gates_deploys_batch_independently(tmp_path, shared_data):
    """A real run whose gates are still deciding (ε = 12 after 80 steps: several blocks
    are open on some batches and closed on others): the certified net keeps them, the
    export decides each once, and every test image gets the same answer alone, in batches
    of 8 and in one batch of the whole split; the report shows both errors alone."""
    from _deployed import assert_deployed_batch_independent

    from epsresnet_tf.config import resolve_config
    from epsresnet_tf.train.loop import run_training

    cfg = resolve_config(
        {
            "arch": "cifar-basic-20",
            "epochs": 2,
            "steps_per_epoch": 40,
            "batch_size": 32,
            "val_steps": 2,
            "epsilon": 12.0,
            "lr_schedule": [[0, 0.1]],
            "histogram_every": 0,
        }
    )
    run, data = tmp_path / "c20", shared_data / "cifar10-subset"
    run_training(cfg, run, data, verbose=0)
    assert cli.main(["compress", str(run)]) == 0  # with the data folder the run trained on
    cert = assert_deployed_batch_independent(run, data)
    gates = cert["deployment"]["gates"]
    assert any(d["verdict"] == "mixed" for d in gates.values()), gates
    assert cert["equivalence"]["images"] == 1017  # the whole test split, at both batches
    assert cert["equivalence"]["batch_1"]["images"] == 1017
    assert cli.main(["report", str(run)]) == 0
    table = (run / "report" / "tables.md").read_text()
    gated = cert["deployment"]["gated_test_error"]["batch_1"]
    assert (
        f"{100 * cert['deployment']['test_error']['batch_1']:.2f}% (gated {100 * gated:.2f}%)"
        in table
    )
