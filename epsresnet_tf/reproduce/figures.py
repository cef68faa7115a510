"""Each piece's figure, in the form of the paper's, from run folders only. Each function
draws into `path` and returns False when there is nothing to draw yet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epsresnet_tf.figures import PIECE, Look, register, save
from epsresnet_tf.plotting import pyplot
from epsresnet_tf.reproduce import readers as R
from epsresnet_tf.reproduce.measure import (
    _sweep_points,
    _trains,
    group_fractions,
    removal_curves,
    replay_resets,
)

#: How the document's figures are written (the shared save): one PNG at 100 dpi, tight,
#: matplotlib's Software entry left out: the document is regenerated often.
DOC_LOOK = Look({".png": None}, {"Software": None}, dpi=100, tight=True)


def _trained(piece, root):

    return [(s, R.history(s.run_dir(root))) for s in _trains(piece)]


@register(PIECE, "dynamic")
def dynamic(piece, root: Path, path: Path) -> bool:
    """Fig. 9's form: discarded ratio against epoch per setting; below, the lr (resets are
    its jumps up); right, how near the next block is to closing (the smallest max|F| / ε
    of the blocks still open: it closes at 1) and ε (the warm-up's switch-on)."""
    runs = [(s, h) for s, h in _trained(piece, root) if h]
    if not runs:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharex="col", height_ratios=[2, 1])
    for step, rows in runs:
        epochs = [r["epoch"] for r in rows]
        line = axes[0, 0].plot(epochs, [r["discarded_ratio"] for r in rows], "-o", ms=2.5)
        colour = line[0].get_color()
        axes[0, 0].plot([], [], color=colour, label=step.name)
        axes[1, 0].step(epochs, [r["lr"] for r in rows], where="post", color=colour)
        resets = replay_resets(R.config(step.run_dir(root)), rows)
        lrs = {r["epoch"]: r["lr"] for r in rows}
        axes[1, 0].plot(resets, [lrs[e] for e in resets], "v", color=colour, ms=7)
        axes[0, 1].plot(epochs, [_closest_open(r) for r in rows], "-", color=colour)
        axes[1, 1].plot(epochs, [r["epsilon"] for r in rows], "--", color=colour)
    axes[0, 0].set_ylabel("discarded ratio")
    axes[0, 0].set_ylim(-0.02, 1.02)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_ylabel("learning rate (▼ reset)")
    axes[0, 1].axhline(1.0, color="k", lw=0.8)
    axes[0, 1].set_ylabel("smallest max|F| / ε of the open blocks")
    axes[0, 1].set_yscale("log")
    axes[1, 1].set_ylabel("ε")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle("Discarded blocks over training (ε-ResNet Fig. 9's form)")
    return save(fig, path, DOC_LOOK)


def _closest_open(row) -> float:
    """The smallest max|F| / ε over the blocks still open (NaN before ε is on)."""
    open_blocks = [b["response_max"] for b in row["blocks"].values() if b["discarded"] < 0.5]
    if not open_blocks or not row.get("epsilon"):
        return float("nan")
    return min(open_blocks) / row["epsilon"]


@register(PIECE, "eps-sweep")
def eps_sweep(piece, root: Path, path: Path) -> bool:
    """Fig. 8's form: discarded ratio and test error against ε."""
    points, _ = _sweep_points(piece, root)
    if not points:
        return False
    plt = pyplot()
    eps = [d["epsilon"] for _, d in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, [100 * len(d["removed"]) / len(d["blocks"]) for _, d in points], "k-o")
    ax.set_xlabel("ε")
    ax.set_ylabel("discarded blocks (%)")
    ax2 = ax.twinx()
    ax2.plot(eps, [100 * (d["error"] or np.nan) for _, d in points], "r--s")
    ax2.set_ylabel("test error (%)", color="r")
    ax.set_title("ε against compression and error (Fig. 8's form)")
    return save(fig, path, DOC_LOOK)


@register(PIECE, "groups")
def groups(piece, root: Path, path: Path) -> bool:
    """Fig. 10's form: per group, the share of kept and discarded blocks, one panel a run."""
    points = [
        (s, d) for s, d in _sweep_points(piece, root)[0] if 0 < len(d["removed"]) < len(d["blocks"])
    ]
    if not points:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(2.6 * len(points) + 1, 3.4), squeeze=False)
    for ax, (_, d) in zip(axes[0], points):
        per = group_fractions([d])
        x = np.arange(len(per))
        gone = np.array([a / b for a, b in per])
        ax.bar(x, 1 - gone, color="tab:green", label="kept")
        ax.bar(x, gone, bottom=1 - gone, color="tab:blue", label="discarded")
        ax.set_xticks(x, [f"g{g}" for g in x])
        ax.set_title(f"ε = {d['epsilon']:g}", fontsize=9)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("share of the group's blocks")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Kept and discarded blocks per group (Fig. 10's form)")
    return save(fig, path, DOC_LOOK)


@register(PIECE, "reduced")
def reduced(piece, root: Path, path: Path) -> bool:
    """Fig. 7's form: parameter memory of the full and the reduced nets."""
    certs = [(s, R.certificate(s.run_dir(root))) for s in _trains(piece)]
    certs = [(s, c) for s, c in certs if c]
    if not certs:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(certs))
    full = [c["before"]["param_bytes"] / 2**20 for _, c in certs]
    red = [c["after"]["param_bytes"] / 2**20 for _, c in certs]
    ax.bar(x - 0.2, full, 0.4, label="full ε-ResNet")
    ax.bar(x + 0.2, red, 0.4, label="reduced ResNet")
    ax.set_xticks(x, [f"ε={R.history(s.run_dir(root))[-1]['epsilon']:g}" for s, _ in certs])
    ax.set_ylabel("parameter memory (MB, float32)")
    ax.legend(fontsize=8)
    ax.set_title("Parameter memory, full against reduced (Fig. 7's form)")
    return save(fig, path, DOC_LOOK)


def _per_epoch(piece, root: Path, key: str, scale: float, ylabel: str, title: str):
    """One line per trained run of the piece: history `key` × `scale` against epoch."""
    runs = [(s, h) for s, h in _trained(piece, root) if h]
    if not runs:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for step, rows in runs:
        ax.plot([r["epoch"] for r in rows], [scale * r[key] for r in rows], label=step.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return fig, ax


@register(PIECE, "mnist-table")
def mnist_table(piece, root: Path, path: Path) -> bool:
    """Fig. 4's form: training loss against epoch of the four d = 50 nets."""
    title = "MNIST d = 50: training loss (gates Fig. 4's form)"
    drawn = _per_epoch(piece, root, "loss", 1.0, "training loss", title)
    if not drawn:
        return False
    drawn[1].set_yscale("log")
    return save(drawn[0], path, DOC_LOOK)


@register(PIECE, "removal")
def removal(piece, root: Path, path: Path) -> bool:
    """Fig. 5 (right)'s form: test accuracy against the number of removed blocks."""
    curves = removal_curves(piece, root)
    if not curves:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (run, order), curve in sorted(curves.items()):
        xs = sorted(curve)
        ax.plot(xs, [100 * (1 - curve[x]) for x in xs], "-o", ms=2.5, label=f"{run} {order}")
    ax.set_xlabel("blocks removed")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("Removal robustness, MNIST d = 100 (gates Fig. 5's form)")
    return save(fig, path, DOC_LOOK)


@register(PIECE, "unit-order")
def unit_order(piece, root: Path, path: Path) -> bool:
    """He et al. Fig. 6's form: test error against epoch for each unit order."""
    title = "Unit order: original against pre-activation"
    drawn = _per_epoch(piece, root, "val_error", 100.0, "test error (%)", title)
    return bool(drawn) and save(drawn[0], path, DOC_LOOK)
