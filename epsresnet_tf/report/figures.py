"""The report's figures: one look (PAPER_STYLE at COLUMN_WIDTH), three formats
(save_figure), each figure one function registered with `per_run_figure` or
`combined_figure` (registry.py)."""

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from epsresnet_tf.figures import Look, save
from epsresnet_tf.naming import layer_prefix, parse_block_id
from epsresnet_tf.outputs import load_net
from epsresnet_tf.plotting import pyplot
from epsresnet_tf.report.data import RunData
from epsresnet_tf.report.registry import combined_figure, per_run_figure
from epsresnet_tf.transform import branch_layers

PERCENTILES = (0, 10, 25, 50, 75, 90, 100)


# --- figures: one look, three formats --------------------------------------------------

#: A paper's column, in inches: every figure is drawn this wide, so its fonts print at their
#: nominal size in a one-column placement.
COLUMN_WIDTH = 3.3
#: The smallest font a figure may use (pt at COLUMN_WIDTH).
MIN_FONT_PT = 7
#: The look of every report figure, owned here alone: `make_report` draws inside it, so a
#: newly registered figure gets it too. PDF fonts are embedded as TrueType (type 42), which
#: publishers accept where type 3 is refused.
PAPER_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 2.4),
    "figure.constrained_layout.use": True,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "figure.titlesize": 8,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,
}
#: The formats of every figure and the metadata key each writer takes the caption under.
FIGURE_FORMATS = {".png": "Description", ".pdf": "Subject", ".svg": "Description"}
ERROR_COLOR = "tab:red"
#: How report figures are written (the shared save): three formats, the rc style's dpi.
PAPER_LOOK = Look(FIGURE_FORMATS)


def paper_style():
    """The context every report figure is drawn in (PAPER_STYLE)."""
    return pyplot().rc_context(PAPER_STYLE)


def short_name(name: str, limit: int = 24) -> str:
    """`name` cut in the middle to `limit` characters ("cifar10-e…seed3"): titles stay on
    their line; the full name goes into the caption and the file's metadata."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[len(name) - (limit - 1 - head) :]}"


def fit_title(text: str, width: float = COLUMN_WIDTH, lines: int = 2) -> str:
    """`text` wrapped to a figure `width` inches wide at the title size, at most `lines`."""
    size = PAPER_STYLE["axes.titlesize"]
    chars = max(int(width * 72 / (0.6 * size)), 10)  # DejaVu Sans: glyphs average < 0.6 em
    return textwrap.fill(text, chars, max_lines=lines, placeholder=" …")


def run_title(r: "RunData", what: str, lines: int = 2) -> str:
    """A figure title: the run's (shortened) name and what the figure shows."""
    return fit_title(f"{short_name(r.name)}: {what}", lines=lines)


def save_figure(fig: Any, path: Path, caption: str) -> str:
    """Write `fig` as PNG (`path`), PDF and SVG beside it, the caption (which names the run in
    full) in each file's metadata; close it and return the caption."""
    return save(fig, path, PAPER_LOOK, caption)


def _integer_ticks(axis):
    """Ticks at whole numbers only (epochs, block counts)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _percent(v):
    return np.nan if v is None else 100 * float(v)


def _epsilon_text(r):
    return "" if r.epsilon is None else f", ε = {r.epsilon:g}"


@per_run_figure("discarded_ratio", when=lambda r: bool(r.rows))
def fig_discarded_ratio(r, path):
    """Validation error (%, left axis) and discarded ratio (right axis) against epoch, the
    learning rate in a panel below (paper Fig. 9)."""
    plt = pyplot()
    epochs = [row["epoch"] for row in r.rows]
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, sharex=True, figsize=(COLUMN_WIDTH, 2.9), height_ratios=[3, 1]
    )
    errors = [_percent(row.get("val_error")) for row in r.rows]
    handles, ratio_ax = [], ax
    if not np.all(np.isnan(errors)):
        handles += ax.plot(epochs, errors, "s--", color=ERROR_COLOR, label="validation error")
        ax.set_ylabel("validation error (%)", color=ERROR_COLOR)
        ax.set_ylim(0, 1.15 * np.nanmax(errors) + 1e-9)
        ratio_ax = ax.twinx()
    ratios = [row.get("discarded_ratio", np.nan) for row in r.rows]
    handles += ratio_ax.plot(epochs, ratios, "o-", color="k", label="discarded ratio")
    ratio_ax.set_ylabel("discarded ratio\n(discarded / gated blocks)")
    ratio_ax.set_ylim(-0.02, 1.02)
    ax.legend(handles=handles, loc="upper right")
    ax_lr.step(epochs, [row.get("lr", np.nan) for row in r.rows], where="pre", color="tab:blue")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning\nrate")
    ax_lr.set_xlabel("epoch")
    _integer_ticks(ax_lr.xaxis)
    ax.set_title(run_title(r, f"discarded blocks and error{_epsilon_text(r)}"))
    caption = (
        f"Run {r.root}: validation error (%, left axis) and discarded ratio (blocks whose gate "
        "is closed over the gated blocks, right axis) at the end of each epoch; the learning "
        "rate below (paper Fig. 9)."
    )
    return save_figure(fig, path, caption)


@per_run_figure("groups", when=lambda r: bool(r.block_ids()))
def fig_groups(r, path):
    """Kept and discarded blocks per group (paper Fig. 10)."""
    plt = pyplot()
    ids = r.block_ids()
    gone = r.discarded()
    groups = sorted({parse_block_id(b)[0] for b in ids})
    kept = [sum(1 for b in ids if parse_block_id(b)[0] == g and b not in gone) for g in groups]
    lost = [sum(1 for b in ids if parse_block_id(b)[0] == g and b in gone) for g in groups]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2))
    x = np.arange(len(groups))
    ax.bar(x, kept, color="tab:blue", label="kept")
    ax.bar(x, lost, bottom=kept, color="lightgray", edgecolor="k", lw=0.5, label="discarded")
    ax.set_xticks(x, [f"group {g}" for g in groups])
    ax.set_ylabel("residual blocks")
    _integer_ticks(ax.yaxis)
    ax.set_ylim(0, 1.3 * max([k + d for k, d in zip(kept, lost)] + [1]))  # room for the legend
    source = "certificate" if r.certificate else "EMA rule"
    ax.set_title(run_title(r, f"kept and discarded blocks per group ({source})"))
    ax.legend(loc="upper right", ncols=2)
    caption = (
        f"Run {r.root}: residual blocks kept (blue) and discarded (gray) in each group, "
        f"discarded by the {source} (paper Fig. 10)."
    )
    return save_figure(fig, path, caption)


#: Up to this many blocks the strip names each one; beyond, only the groups.
MAX_BLOCK_LABELS = 24


def _label_blocks(ax, ids):
    """Rows named by block id (few blocks) or by group (many), a line between groups."""
    groups = [parse_block_id(b)[0] for b in ids]
    for i in range(1, len(ids)):
        if groups[i] != groups[i - 1]:
            ax.axhline(i - 0.5, color="tab:red", lw=0.6)
    if len(ids) <= MAX_BLOCK_LABELS:
        ax.set_yticks(range(len(ids)), ids)
        return
    names = sorted(set(groups))
    centres = [np.mean([i for i, g in enumerate(groups) if g == k]) for k in names]
    ax.set_yticks(centres, [f"group {k}" for k in names])


@per_run_figure("strip", when=lambda r: bool(r.rows and r.rows[-1].get("blocks")))
def fig_strip(r, path):
    """Which blocks were discarded, epoch by epoch (paper Fig. 1's strip), and the blocks the
    certificate removed: drawn as TensorBoard shows it (train/dashboard.py draws both)."""
    from epsresnet_tf.train.dashboard import draw_discard_strip, strip_grid

    plt = pyplot()
    ids, epochs, grid = strip_grid(r.rows, r.block_ids())
    height = min(max(1.3 + 0.14 * len(ids), 2.2), 7.0)
    removed = set(r.certificate["removed"]) if r.certificate else None
    panels = 1 if removed is None else 2
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(COLUMN_WIDTH, height),
        sharey=True,
        squeeze=False,
        width_ratios=[max(len(epochs), 1), max(len(epochs) / 12, 0.8)][:panels],
    )
    cert_ax = axes[0, 1] if removed is not None else None
    draw_discard_strip(fig, axes[0, 0], ids, epochs, grid, removed, cert_ax, bar_on_top=True)
    fig.suptitle(run_title(r, "discarded blocks, epoch by epoch"))
    caption = (
        f"Run {r.root}: for each block (rows, network order, groups separated) and epoch "
        "(columns), the moving average of its discarded indicator at the epoch's end "
        "(ε-gate: 1 − T): black = discarded, light blue = kept"
        + ("; right column: the blocks the certificate removed" if removed is not None else "")
        + " (paper Fig. 1's strip)."
    )
    return save_figure(fig, path, caption)


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


#: A block counts as discarded in an epoch when its discarded average (EMA, decay 0.95:
#: about the last 20 steps, docs/semantics.md §8) ends the epoch above this: its gate was
#: closed on most of the recent steps.
DISCARDED_LEVEL = 0.5
#: A discarded block's kernel has collapsed (paper Fig. 5) once the spread of its weights
#: (10th to 90th percentile) is at most this fraction of the spread it had when the block
#: went: with T = 0 no gradient reaches it and only weight decay shrinks it, by roughly
#: lr·wd/(1 − momentum) per step, so how long that takes depends on the schedule, not on a
#: fixed number of epochs; the figure measures it.
COLLAPSED_SPREAD = 0.5


def discarded_since(r: "RunData", bid: str) -> int | None:
    """The first epoch from which `bid` stays discarded (DISCARDED_LEVEL) to the end of the
    history; None when it is not discarded at the end."""
    since = None
    for row in r.rows:
        value = row.get("blocks", {}).get(bid, {}).get("discarded")
        if value is not None and value >= DISCARDED_LEVEL:
            since = row["epoch"] if since is None else since
        else:
            since = None
    return since


def spread_ratio(series: dict, since: int | None) -> float | None:
    """The kernel's last 10–90 % spread over its spread just before epoch `since` (the
    first histogram when there is none before); None without two histograms."""
    steps = sorted(series)
    if len(steps) < 2:
        return None
    before = [s for s in steps if since is not None and s < since]
    start = before[-1] if before else steps[0]
    lo, hi = PERCENTILES.index(10), PERCENTILES.index(90)

    def spread(step):
        return series[step][hi] - series[step][lo]

    return spread(steps[-1]) / spread(start) if spread(start) > 0 else None


def _fan(ax, series):
    """A kernel's percentiles against epoch as bands: min–max, 10–90 %, 25–75 %, median."""
    steps = sorted(series)
    v = np.array([series[s] for s in steps])
    col = {q: v[:, PERCENTILES.index(q)] for q in PERCENTILES}
    for (lo, hi), alpha in (((0, 100), 0.15), ((10, 90), 0.3), ((25, 75), 0.5)):
        ax.fill_between(
            steps,
            col[lo],
            col[hi],
            color="tab:blue",
            alpha=alpha,
            lw=0,
            label=f"{lo}–{hi} %" if lo else "min–max",
        )
    ax.plot(steps, col[50], color="navy", label="median")
    ax.set_xlim(steps[0], steps[-1])


def _final_kernels(ax, r, bid):
    """Without per-epoch histograms: the percentiles of the block's final kernels."""
    model = load_net(r.run.model_path)
    g, b = parse_block_id(bid)
    kernels = [
        w.numpy().ravel()
        for layer in model.layers
        if layer.name.startswith(layer_prefix(g, b) + "conv")
        for w in layer.weights
    ] or [  # a net not named by block (a Keras application): its branch, from the graph
        layer.kernel.numpy().ravel()
        for layer in branch_layers(model).get(bid, [])
        if hasattr(layer, "kernel")
    ]
    ax.bar([f"{q}" for q in PERCENTILES], np.percentile(np.concatenate(kernels), PERCENTILES))
    ax.set_xlabel("percentile (%)")


def _collapse_blocks(r):
    """(block, "discarded" or "kept") to draw: the block discarded longest, the first kept."""
    gone = r.discarded()
    longest = sorted(gone, key=lambda b: (discarded_since(r, b) or np.inf, parse_block_id(b)))
    kept = [b for b in r.block_ids() if b not in gone]
    return [(b, "discarded") for b in longest[:1]] + [(b, "kept") for b in kept[:1]]


class Collapse:
    """What the weight-collapse figure measured of its discarded block."""

    def __init__(self, bid=None, epochs=None, ratio=None, tag=None):
        self.bid, self.epochs, self.ratio, self.tag = bid, epochs, ratio, tag

    def verdict(self, histograms: bool) -> str:
        """The figure's title: what it shows, and whether that is paper Fig. 5's collapse."""
        if not histograms:
            return "final kernel weights (no per-epoch histograms: no collapse to show)"
        if self.bid is None:
            return "kernel weights of a kept block (no block discarded)"
        if self.ratio is None:
            return f"kernel of {self.bid}: discarded too briefly to show a collapse"
        if self.ratio <= COLLAPSED_SPREAD:
            return f"weight collapse of {self.bid}, discarded for {self.epochs} epochs (Fig. 5)"
        return (
            f"kernel of {self.bid}, discarded for {self.epochs} epochs: not (yet) collapsed "
            "as in paper Fig. 5"
        )


def _collapse_panel(ax, r, bid, what):
    """One block's kernel against epoch (bands; its discarded epochs shaded when it went
    after the first histogram), titled with how its spread changed; a Collapse (empty for a
    kept block), or None without histograms (the final kernels are drawn then)."""
    tb = r.folder.tb_train if r.folder.tb_train.is_dir() else r.folder.tb  # earlier runs: tb/
    series, tag = _histogram_percentiles(tb, bid) if tb.is_dir() else ({}, None)
    if not series:
        _final_kernels(ax, r, bid)
        ax.set_title(f"{bid}, {what}: final kernels", loc="left")
        return None
    _fan(ax, series)
    since = discarded_since(r, bid) if what == "discarded" else None
    ratio = spread_ratio(series, since)
    if since is not None and since - 1 > min(series):
        ax.axvspan(since - 1, max(series), color="0.85", zorder=0, label="discarded")
    ax.set_xlim(min(series), max(series))
    spread = "" if ratio is None else f": 10–90 % spread ×{ratio:.2f}"
    ax.set_title(f"{bid}, {what}{spread}", loc="left")
    ax.set_xlabel("epoch")
    _integer_ticks(ax.xaxis)
    if what == "kept":
        return Collapse()
    return Collapse(bid, None if since is None else r.rows[-1]["epoch"] - since + 1, ratio, tag)


@per_run_figure("weight_collapse", when=lambda r: r.run.model_path.is_file())
def fig_weight_collapse(r, path):
    """A discarded block's kernel against epoch above a kept block's; the title says whether
    it collapsed (paper Fig. 5, COLLAPSED_SPREAD). Without histograms, the final kernels."""
    plt = pyplot()
    chosen = _collapse_blocks(r)
    if not chosen:
        return False
    fig, axes = plt.subplots(
        len(chosen), 1, figsize=(COLUMN_WIDTH, 1.1 + 1.4 * len(chosen)), squeeze=False
    )
    found = [_collapse_panel(ax, r, bid, what) for ax, (bid, what) in zip(axes[:, 0], chosen)]
    for ax in axes[:, 0]:
        ax.set_ylabel("kernel weight")
        ax.axhline(0, color="k", lw=0.5)
    histograms = found[0] is not None
    collapse = found[0] or Collapse()
    if histograms:
        handles = {h.get_label(): h for ax in axes[:, 0] for h in ax.get_legend_handles_labels()[0]}
        fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=3)
    verdict = collapse.verdict(histograms)
    fig.suptitle(run_title(r, verdict, lines=3))
    kernel = f" ({collapse.tag.split('/', 2)[-1]})" if collapse.tag else ""
    caption = (
        f"Run {r.root}: {verdict}. Blocks "
        + ", ".join(f"{b} ({what})" for b, what in chosen)
        + f": percentiles of the block's first kernel{kernel} at each epoch's end, from the "
        "TensorBoard histograms (bands: min–max, 10–90 %, 25–75 %; line: median; gray: the "
        "epochs it was discarded), or of its final kernels when there are none. A discarded "
        f"block's kernel counts as collapsed once its 10–90 % spread is ≤ ×{COLLAPSED_SPREAD:g} "
        "of the spread it had when the block went (paper Fig. 5)."
    )
    return save_figure(fig, path, caption)


@per_run_figure("removal_curves", when=lambda r: bool(r.ablations))
def fig_removal_curves(r, path):
    """Test error against the number of blocks removed, one line per removal order."""
    plt = pyplot()
    fig, ax = plt.subplots()
    for order, doc in sorted(r.ablations.items()):
        rows = doc["rows"]
        ax.plot(
            [x["removed"] for x in rows],
            [_percent(x["top1_error"]) for x in rows],
            "-o",
            label=order,
        )
    ax.set_xlabel("residual blocks removed")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("test error (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(run_title(r, "error as blocks are removed"))
    ax.legend(title="removal order")
    caption = (
        f"Run {r.root}: top-1 test error (%) after removing blocks one by one from the trained "
        "net, in each order `epsresnet ablate` ran (the gates paper's Fig. 5)."
    )
    return save_figure(fig, path, caption)


@combined_figure("epsilon_sweep")
def fig_epsilon_sweep(runs, summary, path):
    """ε against blocks discarded and error, one line per comparison group (a group of one
    run is a point), paper Fig. 8."""
    plt = pyplot()
    groups = {}
    for s in summary:
        if s.get("epsilon") is not None:
            groups.setdefault(s["group"], []).append(s)
    if not groups:
        return False
    fig, (ax_d, ax_e) = plt.subplots(2, 1, sharex=True, figsize=(COLUMN_WIDTH, 3.4))
    for label, rows in groups.items():
        rows = sorted(rows, key=lambda s: s["epsilon"])
        style = "-o" if len(rows) > 1 else "o"
        eps = [s["epsilon"] for s in rows]
        fraction = [_percent(s.get("discarded_fraction")) for s in rows]
        (line,) = ax_d.plot(eps, fraction, style, label=label)
        errors = [_percent(s.get("error_full")) for s in rows]
        ax_e.plot(eps, errors, style, color=line.get_color(), label=label)
    ax_d.set_ylabel("blocks discarded (%)")
    ax_d.set_ylim(-5, 105)
    ax_e.set_ylabel("top-1 error (%)")
    ax_e.set_ylim(bottom=0)
    ax_e.set_xlabel("ε")
    ax_d.set_title("ε against compression and error")
    fig.legend(*ax_d.get_legend_handles_labels(), loc="outside lower center", title="runs of")
    caption = (
        "ε against the fraction of blocks discarded (top) and the top-1 error of the full "
        "net (bottom), one line per group of comparable runs (same dataset, architecture "
        "and schedule; a group of one run is a point; paper Fig. 8): "
        + "; ".join(
            f"{label}: " + ", ".join(s["run"] for s in rows) for label, rows in groups.items()
        )
        + "."
    )
    return save_figure(fig, path, caption)
