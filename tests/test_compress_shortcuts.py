"""Certified compression with every family and shortcut kind (docs/semantics.md §9): a
closed block goes only where its unit is then exactly what the reduced net puts in its
place (nothing, or the group's transition); He et al.'s merging shortcuts (λx, (1 − g)x),
the conv1x1 shortcut and BN-ReLU or (on a shortcut that can be negative) ReLU after the
addition keep it, and the certificate says why."""

import json

import numpy as np
import pytest
from test_compress import batches, close, train_briefly

from epsresnet_tf import compress as C
from epsresnet_tf.blocks import MERGING_SHORTCUTS, SHORTCUTS
from epsresnet_tf.cli import compress as compress_cli
from epsresnet_tf.models import build_model
from epsresnet_tf.models.registry import FAMILIES
from epsresnet_tf.naming import sort_block_ids

#: Per registry family: (arch, image shape, a closed unit of identity shape — where the
#: shortcut variants apply —, a closed first unit whose shape changes (its shortcut stays
#: as the transition) or None, the gate). Tiny nets on tiny images keep the file fast.
CASES = {
    "cifar-basic": ("cifar-basic-8", (8, 8, 3), "group0/block0", "group1/block0", "eps"),
    "cifar-bottleneck": ("cifar-bottleneck-20", (8, 8, 3), "group0/block1", "group1/block0", "eps"),
    "wrn": ("wrn-10-1", (8, 8, 3), "group0/block0", "group1/block0", "eps"),
    "imagenet": ("imagenet-18", (16, 16, 3), "group0/block1", "group1/block0", "eps"),
    "mnist-res": ("mnist-res-4", (4, 4, 1), "group0/block1", None, "eps"),
    "mnist-plain": ("mnist-plain-2", (4, 4, 1), "group0/block1", None, "k"),  # ε: refused
    # Keras's own graph (conv2_block2, conv3_block1: a projection unit) at its least input
    "keras-resnet-v2": ("keras:ResNet50V2", (32, 32, 3), "group0/block1", "group1/block0", "eps"),
}
#: Shortcuts that still map x when the branch adds 0.
MAPS_X = MERGING_SHORTCUTS + ("conv1x1",)


def _cases():
    for family in FAMILIES:
        gate = CASES[family][4] if family in CASES else "eps"
        # a family compression does not rebuild is Keras's graph as it is: no variants
        for shortcut in SHORTCUTS if FAMILIES[family].rebuilds else ("identity",):
            if gate == "k" and shortcut in MERGING_SHORTCUTS:
                continue  # NetConfig refuses: k merges the branches itself
            yield pytest.param(family, gate, shortcut, id=f"{family}-{gate}-{shortcut}")
    for shortcut in SHORTCUTS:  # k-gates: a kept closed one folds g(k) = 0 into its conv
        if shortcut not in MERGING_SHORTCUTS:
            yield pytest.param("cifar-basic", "k", shortcut, id=f"cifar-basic-k-{shortcut}")


def _net(arch, shape, gate, **options):
    opts = dict(classes=10, input_shape=shape, gate=gate, **options)
    if gate == "eps":
        opts["epsilon"] = 0.0  # every gate open until `close`
    return build_model(arch, **opts), opts


def _certify_reduce_check(model, arch, opts, data):
    cert = C.certify(model, {"test": data}, batch_size=len(data[0]))
    reduced, info = C.reduce(model, arch, opts, cert.removable, certificate=cert)
    assert info["removed"] == cert.removable
    return cert, C.check_equivalence(model, reduced, data)


def test_every_registry_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


@pytest.mark.parametrize("family, gate, shortcut", list(_cases()))
def test_a_closed_block_goes_only_where_its_unit_is_then_the_identity(family, gate, shortcut):
    arch, shape, inner, first, _ = CASES[family]
    model, opts = _net(arch, shape, gate, shortcut=shortcut)
    closed = [b for b in (inner, first) if b]
    close(model, *closed)
    data = batches(n=8, batch=4, shape=shape)
    cert, check = _certify_reduce_check(model, arch, opts, data)
    assert cert.closed == sort_block_ids(closed)
    v = cert.blocks[inner]
    if family.startswith("mnist"):
        # the MLP units have no shortcut variants: whatever `shortcut` says, x passes as is
        assert not any("shortcut" in l.name for l in model.layers)
    if shortcut in MAPS_X and not family.startswith("mnist"):
        assert not v.removable and inner not in cert.removable
        assert v.reason == C.closed_unit(model, inner)[1]
        assert v.reason.startswith("closed but kept: its " + shortcut)
        assert v.reason.endswith("not an identity")
    else:
        assert v.removable and inner in cert.removable
        assert v.reason.startswith("closed: the unit is then its")
    if first:  # a resolution change: its pool+pad or projection shortcut is the transition
        kept_as = "transition" if FAMILIES[family].rebuilds else "which the graph keeps"
        assert cert.blocks[first].removable and kept_as in cert.blocks[first].reason
    open_ = [b for b in cert.blocks if b not in closed]
    assert open_ and not any(cert.blocks[b].removable for b in open_)
    assert check["passed"] and check["max_abs_logit_diff"] <= C.TOLERANCE


def test_constant_scaling_by_1_is_the_identity_and_goes():
    model, opts = _net("cifar-basic-8", (8, 8, 3), "eps", shortcut="constant_scaling")
    scaled, _ = _net(
        "cifar-basic-8", (8, 8, 3), "eps", shortcut="constant_scaling", shortcut_scale=1.0
    )
    for net in (model, scaled):
        close(net, "group0/block0")
    data = batches(n=8, batch=4, shape=(8, 8, 3))
    assert C.certify(model, {"test": data}).removable == []
    cert, check = _certify_reduce_check(
        scaled, "cifar-basic-8", dict(opts, shortcut_scale=1.0), data
    )
    assert cert.removable == ["group0/block0"] and check["passed"]


# shortcut_only_gating takes exclusive_gating's path here; the matrix above covers it.
@pytest.mark.parametrize("shortcut", ["constant_scaling", "exclusive_gating"])
def test_trained_merging_shortcut_net_keeps_its_closed_blocks_and_says_why(
    tmp_path, capsys, shortcut
):
    # The case: cifar-basic-14, a closed non-first unit, briefly trained.
    arch, shape = "cifar-basic-14", (8, 8, 3)
    model, opts = _net(arch, shape, "eps", shortcut=shortcut)
    close(model, "group1/block1", "group2/block0")
    data = batches(n=8, batch=4, shape=shape, seed=3)
    train_briefly(model, data, steps=3)
    doc = C.compress_model(
        model,
        arch,
        opts,
        C.CompressData(
            {"train": batches(n=8, batch=4, shape=shape, seed=4), "test": data}, data, batch_size=4
        ),
        tmp_path / "reduced",
        C.CompressOptions(export=False),
    )
    assert doc["removed"] == ["group2/block0"]  # its pool+pad shortcut stays as the transition
    assert doc["equivalence"]["passed"]
    assert doc["equivalence"]["max_abs_logit_diff"] <= C.TOLERANCE
    saved = json.loads((tmp_path / "reduced" / "certificate.json").read_text())
    kept = saved["blocks"]["group1/block1"]
    assert kept["verdict"] == "closed" and kept["removable"] is False
    assert kept["reason"].startswith(f"closed but kept: its {shortcut} shortcut scales x by")
    assert saved["blocks"]["group2/block0"]["removable"] is True
    compress_cli._print_summary(doc)
    assert f"group1/block1: closed but kept: its {shortcut} shortcut" in capsys.readouterr().out
    # What the certificate avoided: dropping the closed block anyway changes predictions.
    unsound, _ = C.reduce(model, arch, opts, ["group1/block1", "group2/block0"], gates="keep")
    assert C.check_equivalence(model, unsound, data)["max_abs_logit_diff"] > C.TOLERANCE


@pytest.mark.parametrize(
    "arch, order, kept_because",
    [
        ("cifar-bottleneck-20", "original", "the ReLU after the addition"),
        ("cifar-bottleneck-20", "bn_after_add", "BN-ReLU after the addition"),
        ("cifar-bottleneck-20", "relu_before_add", None),
        ("cifar-basic-8", "original", None),  # ReLU after the addition of x >= 0: identity
    ],
)
def test_activations_after_the_addition_keep_a_closed_unit_unless_exact(arch, order, kept_because):
    model, opts = _net(arch, (8, 8, 3), "eps", order=order)
    close(model, "group0/block0", "group1/block0")  # group-first units, all but one ≠ shape
    data = batches(n=8, batch=4, shape=(8, 8, 3))
    cert, check = _certify_reduce_check(model, arch, opts, data)
    reasons = [cert.blocks[b].reason for b in cert.closed]
    if kept_because is None:
        assert cert.removable == ["group0/block0", "group1/block0"]
    else:
        assert cert.removable != cert.closed
        assert any(r.startswith("closed but kept: " + kept_because) for r in reasons)
    assert check["passed"] and np.isfinite(check["max_abs_logit_diff"])
