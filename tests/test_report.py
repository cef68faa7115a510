"""Reports: tables against the certificate and history they come from, PNGs with the expected
panels, histogram percentiles against numpy, the ε-sweep choice, refusals."""

import json

import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf import compress as C
from epsresnet_tf import report as R
from epsresnet_tf import sweep as S
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.models import build_model
from epsresnet_tf.runfolder import read_run


def _png_size(path):
    """(width, height) from the PNG header; checks the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def fake_run(root, eps=2.5, closed=("group0/block1", "group1/block0"), errors=(0.5, 0.4, 0.3)):
    """A run folder: config.json, model.keras, history.jsonl, a certificate, an ablation."""
    root.mkdir(parents=True)
    cfg = {
        "arch": "cifar-basic-14",
        "dataset": "cifar10",
        "gate": "eps",
        "epsilon": eps,
        "gate_scope": "batch",
        "batch_size": 8,
        "model_options": {},
        "weight_decay": 2e-4,
    }
    (root / "config.json").write_text(json.dumps(cfg))
    run = read_run(root)
    model = build_model(run.arch, **run.build_options)
    for bid, gate in gate_by_block(model).items():  # closed: T = 0; others open: T = 1
        gate.epsilon.assign(1e6 if bid in closed else 0.0)
    model.save(root / "model.keras")
    ids = [f"group{g}/block{b}" for g in range(3) for b in range(2)]
    rows = []
    for e, err in enumerate(errors, 1):
        blocks = {
            b: {
                "discarded": (1 - 0.5**e) if b in closed else 0.0,
                "gate": 1.0,
                "response_max": 1.0,
                "response_mean": 0.1,
            }
            for b in ids
        }
        count = sum(v["discarded"] for v in blocks.values())
        rows.append(
            {
                "epoch": e,
                "lr": 0.1 / e,
                "epsilon": eps,
                "val_error": err,
                "discarded_count": count,
                "discarded_ratio": count / 6,
                "blocks": blocks,
            }
        )
    (root / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    x = np.random.RandomState(0).randn(16, 32, 32, 3).astype("float32")
    data = [x[:8], x[8:]]
    cert = C.compress_model(
        model,
        run.arch,
        run.build_options,
        certify_data={"test": data},
        check_data=data,
        out_dir=root / "reduced",
        batch_size=8,
        export=False,
    )
    (root / "ablation").mkdir()
    (root / "ablation" / "random.json").write_text(
        json.dumps(
            {"rows": [{"removed": i, "block": None, "top1_error": 0.3 + 0.1 * i} for i in range(4)]}
        )
    )
    return cert


def test_report_tables_and_figures_of_one_run(tmp_path):
    cert = fake_run(tmp_path / "a")
    result = R.make_report([tmp_path / "a"])
    out = tmp_path / "a" / "report"
    text = (out / "tables.md").read_text()
    b, a = cert["before"], cert["after"]
    assert f"{b['trainable_params']:,} → {a['trainable_params']:,}" in text
    assert "6 → 4" in text and "14 → 10" in text  # blocks and layers
    assert "30.00%" in text  # last validation error, both nets
    assert f"{b['layers'] / a['layers']:.2f}×" in text
    assert "| a " in text and "1/2" in text  # per group: kept/total
    for name in ("discarded_ratio", "groups", "strip", "weight_collapse", "removal_curves"):
        w, h = _png_size(out / f"{name}.png")
        assert w > 300 and h > 100, name
    assert len(result["files"]) == 6
    with pytest.raises(UserError, match="--force"):
        R.make_report([tmp_path / "a"])
    R.make_report([tmp_path / "a"], force=True)


def test_a_new_figure_is_one_decorated_function(tmp_path, monkeypatch):
    # registered from here alone: make_report draws it for runs with the data it asks for
    monkeypatch.setattr(R, "PER_RUN_FIGURES", list(R.PER_RUN_FIGURES))

    @R.per_run_figure("epochs_seen", when=lambda r: len(r.rows) >= 2)
    def fig_epochs(r, path):
        plt = R._plt()
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([row["epoch"] for row in r.rows])
        fig.savefig(path, dpi=100)
        plt.close(fig)

    fake_run(tmp_path / "a")
    result = R.make_report([tmp_path / "a"])
    path = tmp_path / "a" / "report" / "epochs_seen.png"
    assert str(path) in result["files"] and _png_size(path)[0] == 400


def test_group_counts_and_strip_follow_the_certificate(tmp_path):
    fake_run(tmp_path / "a", closed=("group2/block0", "group2/block1"))
    run = R.RunData(tmp_path / "a")
    assert run.discarded() == {"group2/block0", "group2/block1"}
    assert R.summary_rows([run])[0]["discarded_fraction"] == pytest.approx(2 / 6)


def test_several_runs_give_the_epsilon_figure_and_need_out(tmp_path, capsys):
    fake_run(tmp_path / "e1", eps=1.0, closed=("group0/block1",), errors=(0.3,))
    fake_run(
        tmp_path / "e3",
        eps=3.0,
        closed=("group0/block1", "group1/block1", "group2/block1"),
        errors=(0.4,),
    )
    with pytest.raises(UserError, match="--out"):
        R.make_report([tmp_path / "e1", tmp_path / "e3"])
    assert (
        cli.main(
            ["report", str(tmp_path / "e1"), str(tmp_path / "e3"), "--out", str(tmp_path / "rep")]
        )
        == 0
    )
    assert "e3-strip.png" in capsys.readouterr().out
    assert _png_size(tmp_path / "rep" / "epsilon_sweep.png")[0] > 300
    rows = R.summary_rows([R.RunData(tmp_path / "e1"), R.RunData(tmp_path / "e3")])
    assert [r["discarded_fraction"] for r in rows] == [pytest.approx(1 / 6), pytest.approx(3 / 6)]
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2


def test_histogram_percentiles_match_numpy(tmp_path):
    import tensorflow as tf

    values = np.random.RandomState(1).uniform(-1, 1, 20000).astype("float32")
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in (1, 2):
            tf.summary.histogram(
                "group0/block1/conv1_kernel", values * step, step=step, buckets=200
            )
    writer.close()
    series, tag = R._histogram_percentiles(tmp_path, "group0/block1")
    assert tag == "group0/block1/conv1_kernel" and sorted(series) == [1, 2]
    for step in (1, 2):
        np.testing.assert_allclose(
            series[step], np.percentile(values * step, R.PERCENTILES), atol=0.03 * step
        )


def test_sweep_choice_is_the_largest_compression_within_the_budget():
    rows = [
        {"epsilon": 1.5, "error": 0.070, "layer_compression": 1.1},
        {"epsilon": 2.0, "error": 0.074, "layer_compression": 1.6},
        {"epsilon": 2.5, "error": 0.079, "layer_compression": 2.4},
        {"epsilon": 3.0, "error": 0.120, "layer_compression": 3.5},
        {"epsilon": 3.5, "error": None},
    ]
    assert S.pick(rows, budget=0.005)["epsilon"] == 2.0
    assert S.pick(rows, budget=0.01)["epsilon"] == 2.5
    assert S.pick(rows, max_error=0.2)["epsilon"] == 3.0
    assert S.pick(rows, max_error=0.01) is None
    assert S.parse_eps("1.5, 2,2.5") == [1.5, 2.0, 2.5]
    with pytest.raises(UserError):
        S.parse_eps("a,b")


@pytest.mark.slow  # trains two short runs on the CIFAR-10 subset (about a minute on 2 cores)
def test_sweep_eps_end_to_end(tmp_path, shared_data):
    doc = S.sweep_eps(
        "demo",
        [0.0, 50.0],
        tmp_path / "sw",
        shared_data / "cifar10-subset",
        epochs=1,
        steps_per_epoch=2,
        val_steps=1,
        batch_size=16,
        max_batches=1,
    )
    by_eps = {r["epsilon"]: r for r in doc["rows"]}
    assert by_eps[0.0]["removed"] == 0  # ε = 0: T = 1, nothing goes
    assert by_eps[50.0]["removed"] > 0 and by_eps[50.0]["equivalent"]
    assert (tmp_path / "sw" / "report" / "epsilon_sweep.png").is_file()
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["choice"] is not None
