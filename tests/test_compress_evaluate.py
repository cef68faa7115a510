"""Evaluation (errors against an independent count, latency) and removal curves."""

import numpy as np
import pytest

from epsresnet_tf import evaluate as E
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.models import build_model

SHAPE = (16, 16, 3)


def labelled(n=40, batch=20, seed=0, classes=10):
    rs = np.random.RandomState(seed)
    x = rs.randn(n, *SHAPE).astype("float32")
    y = rs.randint(0, classes, n).astype("int32")
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def net(**kw):
    opts = dict(classes=10, input_shape=SHAPE, gate="k")
    opts.update(kw)
    return build_model("cifar-basic-14", **opts), opts


def test_error_rates_match_an_independent_count():
    model, _ = net()
    data = labelled()
    z = np.concatenate([np.asarray(model(x, training=False)) for x, _ in data])
    y = np.concatenate([y for _, y in data])
    top5 = np.argsort(-z, axis=1)[:, :5]
    out = E.error_rates(model, data, top5=True)
    assert out["images"] == 40
    assert out["top1_error"] == pytest.approx(np.mean(z.argmax(1) != y))
    assert out["top5_error"] == pytest.approx(np.mean([yi not in t for yi, t in zip(y, top5)]))


def test_evaluate_model_reports_size_and_latency():
    model, _ = net(gate="none")
    out = E.evaluate_model(model, labelled(n=20), batches=(1, 4), repeats=2)
    assert out["layers"] == 14 and out["blocks"] == 6
    assert set(out["latency_per_image_s"]) == {"1", "4"}
    assert all(t > 0 for t in out["latency_per_image_s"].values())


def test_greedy_k_removes_closed_blocks_first_without_changing_the_error():
    model, opts = net()
    gates = gate_by_block(model)
    gates["group1/block1"].k.assign(-1.0)
    gates["group2/block0"].k.assign(0.0)
    gates["group0/block1"].k.assign(0.3)
    order = E.removal_order(model, "greedy-k")
    assert order[:3] == ["group1/block1", "group2/block0", "group0/block1"]
    data = labelled()
    rows = E.ablate(model, "cifar-basic-14", opts, order, data, max_removals=4)
    assert [r["removed"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[3]["block"] == "group0/block1"
    full = E.error_rates(model, data)["top1_error"]
    # g(k) = 0 blocks contribute nothing: their removal leaves every prediction as it was
    assert rows[0]["top1_error"] == rows[1]["top1_error"] == rows[2]["top1_error"] == full
    with pytest.raises(UserError, match="k-gated"):
        E.removal_order(net(gate="eps")[0], "greedy-k")


def test_random_and_by_response_orders():
    model, _ = net(gate="eps", epsilon=0.0)
    a, b = E.removal_order(model, "random", seed=3), E.removal_order(model, "random", seed=3)
    assert a == b and sorted(a) == sorted(E.removal_order(model, "random", seed=4))
    assert len(a) == 6
    gate_by_block(model)["group2/block1"].epsilon.assign(1e6)  # closed: adds exactly 0
    data = labelled()
    contrib = E.block_contributions(model, data)
    assert contrib["group2/block1"] == 0.0
    assert all(v > 0 for b, v in contrib.items() if b != "group2/block1")
    assert E.removal_order(model, "by-response", data)[0] == "group2/block1"
