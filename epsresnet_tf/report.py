"""`epsresnet report RUN_DIR…`: the paper's tables and figures from run folders.

Reads per run: config.json, history.jsonl (one row per epoch), reduced/certificate.json
(after `compress`), ablation/*.json (after `ablate`), tb/train/ kernel histograms (per epoch) or
model.keras (final kernels). Writes to --out (default RUN_DIR/report for one run):

  tables.md                      full vs reduced: error, blocks, layers, params, memory (Figs. 6–7)
  [run-]discarded_ratio.png      discarded ratio, validation error and lr against epoch (Fig. 9)
  [run-]groups.png               kept / discarded blocks per group (Fig. 10)
  [run-]strip.png                which blocks went, epoch by epoch (Fig. 1's strip)
  [run-]weight_collapse.png      kernel percentiles of a discarded and a kept block (Fig. 5)
  [run-]removal_curves.png       error against blocks removed, per order (gates paper Fig. 5)
  epsilon_sweep.png              ε against compression and error over the runs (Fig. 8)

Files are prefixed with the run's name when several runs are reported together.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np

from epsresnet_tf import compress as C
from epsresnet_tf.commands import add_command, force, option
from epsresnet_tf.errors import UserError
from epsresnet_tf.naming import layer_prefix, parse_block_id, sort_block_ids
from epsresnet_tf.outputs import load_net, staged_outputs
from epsresnet_tf.runfolder import RunFolder, read_run

PERCENTILES = (0, 10, 25, 50, 75, 90, 100)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


# --- reading a run ---------------------------------------------------------------------


def read_json(path: Path, fix: str) -> Any:
    """One JSON file; UserError (one line: the file, what is wrong, `fix`) if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); {fix}") from err


def read_jsonl(path: Path, fix: str) -> list[Any]:
    """The rows of a JSON-lines file ([] if there is none); UserError naming the file and the
    line that is not JSON (a garbled history would otherwise end `report` in a traceback)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:  # bytes: a flipped byte that is not UTF-8 is reported with its line too
            rows.append(json.loads(line.decode()))
        except ValueError as err:
            raise UserError(f"{path}, line {number}: not valid JSON ({err}); {fix}") from err
    return rows


class RunData:
    def __init__(self, run_dir):
        self.run = read_run(run_dir)
        self.root = self.run.root
        self.folder = RunFolder(self.root)
        self.name = self.root.name
        self.rows = read_jsonl(self.folder.history, "repair or delete that line (one epoch's row)")
        cert = self.folder.certificate
        fix = "run `epsresnet compress RUN_DIR --force` again"
        self.certificate = read_json(cert, fix) if cert.is_file() else None
        self.ablations = {}
        for path in sorted(self.folder.ablation.glob("*.json")):
            self.ablations[path.stem] = read_json(path, "run `epsresnet ablate --force` again")

    @property
    def epsilon(self):
        if self.rows and self.rows[-1].get("epsilon") is not None:
            return float(self.rows[-1]["epsilon"])
        return self.run.config.get("epsilon")

    def block_ids(self):
        if self.certificate:
            return sort_block_ids(self.certificate["blocks"])
        if self.rows and self.rows[-1].get("blocks"):
            return sort_block_ids(self.rows[-1]["blocks"])
        return []

    def discarded(self, threshold=C.EMA_THRESHOLD):
        """Blocks that went: the certificate's removals, else the last EMAs' (authors' rule)."""
        if self.certificate:
            return set(self.certificate["removed"])
        if self.rows and self.rows[-1].get("blocks"):
            return set(C.ema_removable(self.rows[-1]["blocks"], threshold))
        return set()

    def final_error(self):
        for row in reversed(self.rows):
            if row.get("val_error") is not None:
                return float(row["val_error"])
        return None


# --- tables ----------------------------------------------------------------------------


def _mb(n):
    return f"{n / 2**20:.2f} MB"


def summary_rows(runs):
    """One dict per run: error and size of the full and reduced nets (paper Figs. 6–7)."""
    out = []
    for r in runs:
        c = r.certificate
        err = r.final_error()
        row = {
            "run": r.name,
            "arch": r.run.arch,
            "epsilon": r.epsilon,
            "error_full": err,
            "error_reduced": None,
        }
        if c:
            b, a = c["before"], c["after"]
            eq = c["equivalence"]
            if "error_full" in eq:  # measured on the whole test split by `compress`
                row.update(
                    error_full=eq["error_full"],
                    error_reduced=eq["error_reduced"],
                    error_source="test split (compress check)",
                )
            else:  # identical predictions: the reduced net's error is the full one's
                row["error_reduced"] = err if eq["passed"] else None
            row.update(
                blocks_full=c["blocks_before"],
                blocks_reduced=c["blocks_after"],
                layers_full=b["layers"],
                layers_reduced=a["layers"],
                params_full=b["trainable_params"],
                params_reduced=a["trainable_params"],
                memory_full=b["param_bytes"],
                memory_reduced=a["param_bytes"],
                layer_compression=b["layers"] / a["layers"],
                discarded_fraction=c["removed_count"] / max(c["blocks_before"], 1),
                max_logit_diff=c["equivalence"]["max_abs_logit_diff"],
            )
        else:
            n = len(r.block_ids())
            row.update(
                blocks_full=n,
                blocks_reduced=n - len(r.discarded()),
                discarded_fraction=len(r.discarded()) / n if n else None,
            )
        out.append(row)
    return out


def _pct(v):
    """A fraction as a percentage with two decimals, or "n/a"."""
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _get(row, key, fmt=str):
    """row[key] formatted with `fmt`, or "n/a" when it is missing or None."""
    v = row.get(key)
    return "n/a" if v is None else fmt(v)


def _thousands(v):
    """An integer with thousands separators."""
    return f"{v:,}"


_MAIN_HEADERS = [
    "run",
    "arch",
    "ε",
    "error full",
    "error reduced",
    "blocks",
    "layers",
    "params",
    "param memory (float32)",
    "layer compression",
]


def _main_table(rows):
    """The cells of the full-against-reduced table, one list per summary row."""
    return [
        [
            r["run"],
            r["arch"],
            _get(r, "epsilon", lambda v: f"{v:g}"),
            _pct(r["error_full"]),
            _pct(r["error_reduced"]),
            f"{_get(r, 'blocks_full')} → {_get(r, 'blocks_reduced')}",
            f"{_get(r, 'layers_full')} → {_get(r, 'layers_reduced')}",
            f"{_get(r, 'params_full', _thousands)} → {_get(r, 'params_reduced', _thousands)}",
            f"{_get(r, 'memory_full', _mb)} → {_get(r, 'memory_reduced', _mb)}",
            _get(r, "layer_compression", lambda v: f"{v:.2f}×"),
        ]
        for r in rows
    ]


def _per_group_section(runs):
    """The markdown lines of the kept-blocks-per-group table ([] when no run has a
    certificate)."""
    from tabulate import tabulate

    per_group = []
    for r in runs:
        c = r.certificate
        if c:
            per_group.append(
                [r.name]
                + [
                    f"{a}/{b}"
                    for a, b in zip(c["blocks_per_group_after"], c["blocks_per_group_before"])
                ]
            )
    if not per_group:
        return []
    width = max(len(p) for p in per_group) - 1
    return [
        "## Kept blocks per group (kept/total)",
        "",
        tabulate(
            per_group, headers=["run"] + [f"group {g}" for g in range(width)], tablefmt="github"
        ),
        "",
    ]


def tables(runs):
    """The report's markdown tables and the summary rows they show: (text, rows)."""
    from tabulate import tabulate

    rows = summary_rows(runs)
    text = [
        "## Full against reduced (paper Figs. 6–7)",
        "",
        tabulate(_main_table(rows), headers=_MAIN_HEADERS, tablefmt="github"),
        "",
        "Error: top-1 on the test images of `compress`'s equivalence check where present, "
        "else the last validation error in history.jsonl (the reduced net's is then the same "
        "when the check passed, else n/a).",
        "",
    ]
    text += _per_group_section(runs)
    return "\n".join(text), rows


# --- figures ---------------------------------------------------------------------------


#: Figures drawn for every run: (file stem, function, whether the run has its data). A new
#: figure is one function with the decorator; `make_report` draws every registered one.
PER_RUN_FIGURES = []


def per_run_figure(stem, when=lambda r: True):
    """Register `fn(run_data, path)` as a figure of every run for which `when(run)` holds;
    `fn` may return False to say it drew nothing (no file is listed then)."""

    def register_figure(fn):
        PER_RUN_FIGURES.append((stem, fn, when))
        return fn

    return register_figure


@per_run_figure("discarded_ratio", when=lambda r: bool(r.rows))
def fig_discarded_ratio(r, path):
    plt = _plt()
    epochs = [row["epoch"] for row in r.rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        epochs,
        [row.get("discarded_ratio", 0) for row in r.rows],
        "k-o",
        ms=3,
        label="discarded ratio",
    )
    if any(row.get("val_error") is not None for row in r.rows):
        ax.plot(
            epochs,
            [row.get("val_error", np.nan) for row in r.rows],
            "r--",
            label="validation error",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("ratio")
    ax.set_ylim(-0.02, 1.02)
    ax2 = ax.twinx()
    ax2.step(
        epochs, [row.get("lr", np.nan) for row in r.rows], "b:", where="post", label="learning rate"
    )
    ax2.set_yscale("log")
    ax2.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title(f"{r.name}: discarded blocks over training (ε = {r.epsilon:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@per_run_figure("groups", when=lambda r: bool(r.block_ids()))
def fig_groups(r, path):
    plt = _plt()
    ids = r.block_ids()
    gone = r.discarded()
    groups = sorted({parse_block_id(b)[0] for b in ids})
    kept = [sum(1 for b in ids if parse_block_id(b)[0] == g and b not in gone) for g in groups]
    lost = [sum(1 for b in ids if parse_block_id(b)[0] == g and b in gone) for g in groups]
    fig, ax = plt.subplots(figsize=(5, 4))
    x = np.arange(len(groups))
    ax.bar(x, kept, color="tab:blue", label="kept")
    ax.bar(x, lost, bottom=kept, color="lightgray", edgecolor="k", label="discarded")
    ax.set_xticks(x, [f"group {g}" for g in groups])
    ax.set_ylabel("blocks")
    ax.set_ylim(0, 1.3 * max([k + d for k, d in zip(kept, lost)] + [1]))  # room for the legend
    source = "certificate" if r.certificate else "EMA rule"
    ax.set_title(f"{r.name}: kept / discarded per group ({source})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@per_run_figure("strip", when=lambda r: bool(r.rows and r.rows[-1].get("blocks")))
def fig_strip(r, path):
    """Paper Fig. 1's strip as TensorBoard shows it (train/dashboard.py draws both), with
    the certificate's removals as a last column after `compress`."""
    from epsresnet_tf.train.dashboard import draw_discard_strip, strip_grid

    plt = _plt()
    ids, epochs, grid = strip_grid(r.rows, r.block_ids())
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.2 * max(len(ids), 4)))
    removed = set(r.certificate["removed"]) if r.certificate else None
    draw_discard_strip(fig, ax, ids, epochs, grid, removed)
    ax.set_title(f"{r.name}: discarded blocks (ε = {r.epsilon:g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _histogram_percentiles(tb_dir, tag_prefix):
    """{epoch: percentiles} of a block's first kernel from the per-epoch TensorBoard
    histograms (bucket edges and counts; percentiles interpolated inside buckets)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = sorted(
        t for t in acc.Tags().get("tensors", []) if t.startswith(tag_prefix + "/") and "kernel" in t
    )
    if not tags:
        return {}, None
    out = {}
    for event in acc.Tensors(tags[0]):
        buckets = tf.make_ndarray(event.tensor_proto)  # (k, 3): left, right, count
        if buckets.size == 0:
            continue
        left, right, count = buckets[:, 0], buckets[:, 1], buckets[:, 2]
        cum = np.cumsum(count) / max(count.sum(), 1)
        values = []
        for q in PERCENTILES:
            i = int(np.searchsorted(cum, q / 100.0))
            i = min(i, len(cum) - 1)
            prev = cum[i - 1] if i else 0.0
            frac = 0.0 if cum[i] == prev else (q / 100.0 - prev) / (cum[i] - prev)
            values.append(float(left[i] + np.clip(frac, 0, 1) * (right[i] - left[i])))
        out[int(event.step)] = values
    return out, tags[0]


@per_run_figure("weight_collapse", when=lambda r: r.run.model_path.is_file())
def fig_weight_collapse(r, path):
    """Percentiles of a discarded block's kernel against epoch (TensorBoard histograms), beside
    a kept block's; without histograms, the final kernels of model.keras."""
    plt = _plt()
    ids = r.block_ids()
    gone = sorted(r.discarded(), key=parse_block_id)
    kept = [b for b in ids if b not in r.discarded()]
    chosen = [(b, "discarded") for b in gone[:1]] + [(b, "kept") for b in kept[:1]]
    if not chosen:
        return False
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.5 * len(chosen), 4), squeeze=False)
    for ax, (bid, what) in zip(axes[0], chosen):
        series, tag = ({}, None)
        tb = r.folder.tb_train if r.folder.tb_train.is_dir() else r.folder.tb  # earlier: tb/
        if tb.is_dir():
            series, tag = _histogram_percentiles(tb, bid)
        if series:
            steps = sorted(series)
            vals = np.array([series[s] for s in steps])
            for j, q in enumerate(PERCENTILES):
                ax.plot(steps, vals[:, j], label=f"{q}%")
            ax.set_xlabel("epoch")
            ax.set_title(f"{bid} ({what}): {tag.split('/', 2)[-1]}", fontsize=9)
        else:
            model = load_net(r.run.model_path)
            g, b = parse_block_id(bid)
            kernels = [
                w.numpy().ravel()
                for l in model.layers
                if l.name.startswith(layer_prefix(g, b) + "conv")
                for w in l.weights
            ]
            vals = np.percentile(np.concatenate(kernels), PERCENTILES)
            ax.bar([f"{q}%" for q in PERCENTILES], vals)
            ax.set_title(f"{bid} ({what}): final kernel percentiles", fontsize=9)
        ax.set_ylabel("weight value")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7, ncol=2) if series else None
    fig.suptitle(f"{r.name}: weight collapse of a discarded block (paper Fig. 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@per_run_figure("removal_curves", when=lambda r: bool(r.ablations))
def fig_removal_curves(r, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for order, doc in sorted(r.ablations.items()):
        rows = doc["rows"]
        ax.plot(
            [x["removed"] for x in rows],
            [100 * x["top1_error"] for x in rows],
            "-o",
            ms=3,
            label=order,
        )
    ax.set_xlabel("blocks removed")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{r.name}: removal robustness")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_epsilon_sweep(summary, path):
    """ε against compression (discarded fraction) and error, one point per run (Fig. 8)."""
    plt = _plt()
    pts = sorted(
        (s["epsilon"], s.get("discarded_fraction"), s.get("error_full"))
        for s in summary
        if s.get("epsilon") is not None
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [p[0] for p in pts]
    ax.plot(
        eps,
        [np.nan if p[1] is None else 100 * p[1] for p in pts],
        "k-o",
        label="blocks discarded (%)",
    )
    ax.set_xlabel("ε")
    ax.set_ylabel("blocks discarded (%)")
    ax2 = ax.twinx()
    ax2.plot(eps, [np.nan if p[2] is None else 100 * p[2] for p in pts], "r--s", label="error (%)")
    ax2.set_ylabel("top-1 error (%)", color="r")
    ax.set_title("ε against compression and error")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_report(run_dirs, out=None, force=False):
    """Write tables.md and the PNGs; returns {"tables": text, "files": [paths], "rows": [...]}."""
    if not run_dirs:
        raise UserError("give at least one run folder")
    runs = [RunData(d) for d in run_dirs]
    if out is None:
        if len(runs) > 1:
            raise UserError("several runs: pass --out FOLDER for the combined report")
        out = runs[0].folder.report
    out = Path(out)
    if out.exists() and out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(
            f"{out} is not empty; pass --force to replace the report or --out another folder"
        )
    # Drawn into a folder beside `out` and swapped in at the end: a failure half-way through
    # the figures leaves the previous report whole (files that are not ours stay).
    with staged_outputs(out, owned=REPORT_FILES) as stage:
        files, text, rows = _write_report(runs, stage)
    return {"tables": text, "files": [str(out / f.name) for f in files], "rows": rows}


#: The names a report writes (glob patterns): --force replaces these, other files stay.
REPORT_FILES = ("tables.md", "*.png")


def _write_report(runs, out):
    """tables.md and the figures into `out`: (paths written, tables text, summary rows)."""
    files = []
    text, rows = tables(runs)
    (out / "tables.md").write_text(text + "\n")
    files.append(out / "tables.md")
    for r in runs:
        prefix = f"{r.name}-" if len(runs) > 1 else ""
        for stem, draw, when in PER_RUN_FIGURES:
            path = out / f"{prefix}{stem}.png"
            if when(r) and draw(r, path) is not False:
                files.append(path)
    if len(runs) > 1:
        fig_epsilon_sweep(rows, out / "epsilon_sweep.png")
        files.append(out / "epsilon_sweep.png")
    return files, text, rows


def _cli(args):
    result = make_report(args.run_dirs, args.out, args.force)
    print(result["tables"])
    for f in result["files"]:
        print(f"wrote {f}")
    return 0


def register(subparsers):
    """Add the `report` subcommand."""
    add_command(
        subparsers,
        "report",
        help="tables and figures (paper Figs. 1, 5–10) from run folders",
        description="Tables (full vs reduced error, blocks, layers, params, memory) and PNGs "
        "(discarded ratio, kept per group, discard strip, weight collapse, removal "
        "curves, ε sweep) from one or more run folders.",
        func=_cli,
        options=[
            option(
                "run_dirs", nargs="+", help="run folders (after `compress`/`ablate` for all panels)"
            ),
            option(
                "--out", default=None, help="output folder (default: RUN_DIR/report for one run)"
            ),
            force("an existing report"),
        ],
    )
