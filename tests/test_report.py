"""Reports: tables against the certificate and history they come from, figures in three formats
at a paper's column width, runs compared only within their group, an honest weight-collapse
title, re-runs without --out, histogram percentiles against numpy, the ε-sweep choice."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from epsresnet_tf import cli
from epsresnet_tf import compress as C
from epsresnet_tf import figures as FIG
from epsresnet_tf import report as R
from epsresnet_tf import sweep as S
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.models import build_model
from epsresnet_tf.plotting import pyplot
from epsresnet_tf.report import figures as report_figures
from epsresnet_tf.runfolder import RunFolder, read_run


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
        C.CompressData({"test": data}, data, batch_size=8),
        root / "reduced",
        C.CompressOptions(export=False),
    )
    (root / "ablation").mkdir()
    (root / "ablation" / "random.json").write_text(
        json.dumps(
            {"rows": [{"removed": i, "block": None, "top1_error": 0.3 + 0.1 * i} for i in range(4)]}
        )
    )
    return cert


FIGURES = ("discarded_ratio", "groups", "strip", "weight_collapse", "removal_curves")
#: A run name longer than a title at a column's width.
LONG_NAME = "cifar10-eps-110-e2.5-seed3-batch128-ghost-bn-and-a-very-long-tail"


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """One fake_run (a net, a certificate) shared by the tests, which report on copies."""
    root = tmp_path_factory.mktemp("made") / LONG_NAME
    cert = fake_run(root)
    return root, cert


def copy_run(made_run, tmp_path):
    import shutil

    return shutil.copytree(made_run[0], tmp_path / made_run[0].name)


def history_run(root, dataset="cifar10", eps=2.5, epochs=3, closed=(), err=0.3):
    """A run folder of config.json and history.jsonl alone (no net): what the history figures
    and the ε figure read. `closed` blocks read discarded from epoch 1."""
    root.mkdir(parents=True)
    cfg = {"arch": "cifar-basic-14", "dataset": dataset, "gate": "eps", "epsilon": eps}
    cfg.update(epochs=epochs, lr_schedule=[[0, 0.1]], batch_size=8, model_options={})
    (root / "config.json").write_text(json.dumps(cfg))
    ids = [f"group{g}/block{b}" for g in range(3) for b in range(2)]
    blocks = {b: {"discarded": float(b in closed)} for b in ids}
    rows = [
        {
            "epoch": e,
            "lr": 0.1,
            "epsilon": eps,
            "val_error": err,
            "blocks": blocks,
            "discarded_ratio": len(closed) / 6,
        }
        for e in range(1, epochs + 1)
    ]
    (root / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def capture_figures(monkeypatch):
    """{file stem: figure} of every figure the report saves, kept for inspection."""
    drawn = {}
    save = R.save_figure

    def keep(fig, path, caption):
        drawn[path.stem] = fig
        return save(fig, path, caption)

    monkeypatch.setattr(report_figures, "save_figure", keep)
    return drawn


def _title(fig):
    return " ".join(fig.get_suptitle().split())


def only_figures(monkeypatch, *stems):
    """Draw only the registered figures named (the others cost time and are tested apart)."""
    kept = [f for f in R.PER_RUN_FIGURES if f[0] in stems]
    monkeypatch.setitem(FIG.REGISTRY, FIG.RUN, kept)


def test_one_run_report_tables_and_figures_at_a_column_width(made_run, tmp_path, monkeypatch):
    import matplotlib.text
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    run, cert = copy_run(made_run, tmp_path), made_run[1]
    drawn = capture_figures(monkeypatch)
    result = R.make_report([run])
    out = run / "report"
    text = (out / "tables.md").read_text()
    b, a = cert["before"], cert["after"]
    assert f"{b['trainable_params']:,} → {a['trainable_params']:,}" in text
    assert "6 → 4" in text and "14 → 10" in text  # blocks and layers
    assert "30.00%" in text  # last validation error, both nets
    assert f"{b['layers'] / a['layers']:.2f}×" in text
    assert f"| {LONG_NAME} " in text and "1/2" in text  # per group: kept/total
    assert len(result["files"]) == 3 + 3 * len(FIGURES)  # report.json, tables.md, figures.md
    figures_md = (out / "figures.md").read_text()
    assert all(f"![{name}]({name}.png)" in figures_md for name in FIGURES)
    assert set(drawn) == set(FIGURES)
    for stem, fig in drawn.items():
        w, h = _png_size(out / f"{stem}.png")
        assert w == round(R.COLUMN_WIDTH * 300) and h > 300, stem  # 3.3 in at 300 dpi
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF-"), stem
        svg = ET.parse(out / f"{stem}.svg").getroot()
        assert svg.tag == "{http://www.w3.org/2000/svg}svg", stem
        canvas = FigureCanvasAgg(fig)  # drawn again: the layout runs as for the PNG
        canvas.draw()
        drawn_box = fig.get_tightbbox(canvas.get_renderer())  # inches
        assert drawn_box.x0 > -0.01 and drawn_box.x1 < R.COLUMN_WIDTH + 0.01, stem  # titles fit
        for t in fig.findobj(matplotlib.text.Text):
            if t.get_visible() and t.get_text().strip():
                assert t.get_fontsize() >= R.MIN_FONT_PT, (stem, t.get_text())
                assert LONG_NAME not in t.get_text()  # shortened in the figure …
        assert str(run) in (out / f"{stem}.svg").read_text()  # … named in full in its metadata
    assert str(run) in figures_md  # and in the captions
    ratio_fig = drawn["discarded_ratio"]
    error_ax = next(ax for ax in ratio_fig.axes if "error" in ax.get_ylabel())
    ratio_ax = next(ax for ax in ratio_fig.axes if "discarded" in ax.get_ylabel())
    assert error_ax is not ratio_ax and "%" in error_ax.get_ylabel()
    assert list(error_ax.get_lines()[0].get_ydata()) == pytest.approx([50, 40, 30])  # in %
    assert ratio_ax.get_lines()[0].get_ydata()[-1] == pytest.approx((2 - 2 * 0.125) / 6)
    assert "no per-epoch histograms" in _title(drawn["weight_collapse"])  # fake_run has no tb/


def test_a_report_is_refreshed_without_force_and_keeps_the_users_files(tmp_path, monkeypatch):
    only_figures(monkeypatch, "strip")
    run = history_run(tmp_path / "a", closed=("group0/block1",))
    out = run / "report"
    R.make_report([run])
    (out / "notes.md").write_text("mine")
    (out / "strip.png").write_bytes(b"stale")  # a generated file: replaced
    (out / "old-figure.svg").write_text("<svg/>")
    manifest = json.loads((out / R.MANIFEST).read_text())
    manifest["files"].append("old-figure.svg")  # one an earlier report wrote: goes
    (out / R.MANIFEST).write_text(json.dumps(manifest))
    R.make_report([run])
    assert sorted(p.name for p in out.iterdir()) == [
        "figures.md",
        "notes.md",
        "report.json",
        "strip.pdf",
        "strip.png",
        "strip.svg",
        "tables.md",
    ]
    assert (out / "notes.md").read_text() == "mine"
    assert _png_size(out / "strip.png")[0] == round(R.COLUMN_WIDTH * 300)
    assert "notes.md" not in json.loads((out / R.MANIFEST).read_text())["files"]


def test_a_folder_that_is_not_a_report_needs_force(tmp_path, monkeypatch):
    only_figures(monkeypatch, "strip")
    run = history_run(tmp_path / "a", closed=("group0/block1",))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "photo.png").write_bytes(b"not ours")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--force"):
        R.make_report([run], other)
    assert (other / "photo.png").read_bytes() == b"not ours"
    R.make_report([run], other, force=True)  # --force: tables and figures replaced
    assert (other / "notes.txt").read_text() == "mine" and not (other / "photo.png").exists()
    assert (other / R.MANIFEST).is_file()


def test_a_new_figure_is_one_decorated_function(tmp_path, monkeypatch):
    # registered from here alone: make_report draws it for runs with the data it asks for
    only_figures(monkeypatch)

    @R.per_run_figure("epochs_seen", when=lambda r: len(r.rows) >= 2)
    def fig_epochs(r, path):
        plt = pyplot()
        fig, ax = plt.subplots()
        ax.plot([row["epoch"] for row in r.rows])
        return R.save_figure(fig, path, "epochs")

    result = R.make_report([history_run(tmp_path / "a")])
    path = tmp_path / "a" / "report" / "epochs_seen.png"
    assert str(path) in result["files"] and _png_size(path)[0] == round(R.COLUMN_WIDTH * 300)
    assert path.with_suffix(".pdf").is_file()
    R.make_report([history_run(tmp_path / "b", epochs=1)])
    assert not (tmp_path / "b" / "report" / "epochs_seen.png").exists()


def test_group_counts_and_strip_follow_the_certificate(tmp_path):
    fake_run(tmp_path / "a", closed=("group2/block0", "group2/block1"))
    run = R.RunData(tmp_path / "a")
    assert run.discarded() == {"group2/block0", "group2/block1"}
    assert R.summary_rows([run])[0]["discarded_fraction"] == pytest.approx(2 / 6)


def test_several_runs_give_the_epsilon_figure_in_their_parents_report(
    tmp_path, capsys, monkeypatch
):
    only_figures(monkeypatch, "strip")
    runs = tmp_path / "runs"
    history_run(runs / "e1", eps=1.0, closed=("group0/block1",))
    history_run(runs / "e3", eps=3.0, closed=("group0/block1", "group1/block1", "group2/block1"))
    assert cli.main(["report", str(runs / "e1"), str(runs / "e3")]) == 0
    assert f"wrote {runs / 'report' / 'e3-strip.png'} (and .pdf, .svg)" in capsys.readouterr().out
    assert _png_size(runs / "report" / "epsilon_sweep.png")[0] == round(R.COLUMN_WIDTH * 300)
    rows = R.summary_rows([R.RunData(runs / "e1"), R.RunData(runs / "e3")])
    assert [r["discarded_fraction"] for r in rows] == [pytest.approx(1 / 6), pytest.approx(3 / 6)]
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_report_on_a_history_a_kill_cut_short_reports_its_whole_epochs_and_says_so(
    tmp_path, capsys, monkeypatch
):
    # A kill while history.jsonl was appended leaves a half line; resume and compress skip
    # it (runfolder reads the history for all of them), and so does report, saying so.
    only_figures(monkeypatch, "strip")
    run = history_run(tmp_path / "a", epochs=3, err=0.25)
    with open(run / "history.jsonl", "a") as f:
        f.write('{"epoch": 4, "lr": 0.1, "val_err')
    assert cli.main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "history.jsonl: the last line is cut short" in err and "its 3 whole epochs" in err
    assert "25.00%" in out
    assert [r["epoch"] for r in R.RunData(run).rows] == [1, 2, 3]
    assert RunFolder(run).read_history() == R.RunData(run).rows
    # the same damage with a newline after it is not a kill's half line: one line naming it
    with open(run / "history.jsonl", "a") as f:
        f.write("\n")
    with pytest.raises(UserError, match=r"history.jsonl, line 4: not valid JSON"):
        R.RunData(run)


def test_runs_are_compared_only_within_their_group(tmp_path, monkeypatch):
    only_figures(monkeypatch)
    drawn = capture_figures(monkeypatch)
    runs = tmp_path / "runs"
    history_run(runs / "digits-e5", "digits", eps=5.0, closed=("group0/block1", "group2/block0"))
    history_run(runs / "digits-e2", "digits", eps=2.0, closed=("group0/block1",))
    history_run(runs / "cifar-e2.5", "cifar10", eps=2.5, closed=("group1/block1",))
    history_run(runs / "cifar-long", "cifar10", eps=3.0, epochs=4)  # another schedule
    result = R.make_report(sorted(runs.iterdir()))
    assert result["out"] == str(runs / "report")
    assert result["groups"] == {
        "cifar10, cifar-basic-14, 3 epochs": ["cifar-e2.5"],
        "cifar10, cifar-basic-14, 4 epochs": ["cifar-long"],
        "digits, cifar-basic-14, 3 epochs": ["digits-e2", "digits-e5"],
    }
    discarded_ax, error_ax = drawn["epsilon_sweep"].axes[:2]
    lines = {line.get_label(): line for line in discarded_ax.get_lines()}
    assert set(lines) == set(result["groups"])  # one line per group, labelled
    digits = lines["digits, cifar-basic-14, 3 epochs"]
    assert list(digits.get_xdata()) == [2.0, 5.0]  # the digits trend holds digits runs only
    np.testing.assert_allclose(digits.get_ydata(), [100 / 6, 200 / 6])
    cifar = lines["cifar10, cifar-basic-14, 3 epochs"]
    assert list(cifar.get_xdata()) == [2.5] and cifar.get_linestyle() == "None"  # a point
    assert [list(x.get_xdata()) for x in error_ax.get_lines()] == [
        list(x.get_xdata()) for x in lines.values()
    ]
    assert error_ax.get_ylabel() == "top-1 error (%)"


def test_report_over_runs_star_twice_without_out(tmp_path, capsys, monkeypatch):
    only_figures(monkeypatch, "strip")
    runs = tmp_path / "runs"
    history_run(runs / "a", eps=1.0, closed=("group0/block1",))
    history_run(runs / "b", eps=3.0, closed=("group0/block1", "group1/block0"))
    (runs / "README.txt").write_text("my notes on these runs")
    for _ in range(2):  # the second time `runs/*` holds runs/report too
        argv = ["report", *sorted(str(p) for p in runs.iterdir())]
        assert cli.main(argv) == 0
        err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"skipped {runs / 'README.txt'}: not a run folder (no config.json)",
        f"skipped {runs / 'report'}: not a run folder (no config.json)",
    ]
    assert (runs / "report" / "epsilon_sweep.pdf").read_bytes().startswith(b"%PDF-")
    assert (runs / "report" / "a-strip.svg").is_file() and (runs / "README.txt").is_file()
    assert not [p for p in runs.iterdir() if ".new-" in p.name or ".old-" in p.name]
    with pytest.raises(UserError, match="none of the 2 paths is a run folder"):
        R.make_report([runs / "report", runs / "README.txt"])


def _kernel_histograms(tb, shrink):
    """Histograms of a discarded (group0/block1) and a kept (group0/block0) kernel at epochs 1
    and 2; the discarded one's weights scaled by `shrink` at epoch 2."""
    import tensorflow as tf

    values = np.random.RandomState(2).normal(0, 0.2, 5000).astype("float32")
    writer = tf.summary.create_file_writer(str(tb))
    with writer.as_default():
        for step, scale in ((1, 1.0), (2, shrink)):
            tf.summary.histogram("group0/block1/conv1_kernel", values * scale, step=step)
            tf.summary.histogram("group0/block0/conv1_kernel", values, step=step)
    writer.close()


def test_weight_collapse_title_says_what_the_kernels_did(made_run, tmp_path, monkeypatch):
    import shutil

    only_figures(monkeypatch, "weight_collapse")
    drawn = capture_figures(monkeypatch)
    run = copy_run(made_run, tmp_path)  # group0/block1 discarded from epoch 1 of 3
    _kernel_histograms(run / "tb", shrink=0.95)
    R.make_report([run])
    fig = drawn["weight_collapse"]
    assert _title(fig) == (
        "cifar10-eps…ry-long-tail: kernel of group0/block1, discarded for 3 epochs: not (yet) "
        "collapsed as in paper Fig. 5"
    )
    assert fig.axes[0].get_title("left") == "group0/block1, discarded: 10–90 % spread ×0.95"
    assert fig.axes[1].get_title("left") == "group0/block0, kept: 10–90 % spread ×1.00"
    shutil.rmtree(run / "tb")
    _kernel_histograms(run / "tb", shrink=0.3)
    R.make_report([run])
    assert _title(drawn["weight_collapse"]).endswith(
        ": weight collapse of group0/block1, discarded for 3 epochs (Fig. 5)"
    )


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
