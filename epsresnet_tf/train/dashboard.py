"""What training writes for TensorBoard (docs/DASHBOARD.md), and paper Fig. 1's strip.

Two runs per run folder, as Keras's own callback writes them: `tb/train` and
`tb/validation` (runfolder/names.py's layout). A quantity measured on both splits has the same
tag in both, so TensorBoard overlays train and validation on one chart.

Tags (few sections, several charts each; x = finished epochs unless said otherwise):

    discarding/  count, blocks_sum, ratio, ratio_authors
    schedule/    lr, lr_reset (the lr the adaptive reset set, at its epochs; else 0), and
                 the gate kind's hyper-parameters (epsilon), each a chart of its own
    metrics/     error, side_error, top5_error, loss, xent   (train and validation runs)
    group{g}/    block{b}/discarded, …/gate, …/response_max, … (the gate kind's monitors)
    steps/       loss, error, discarded_count, lr          (x = global step, every
                 `summary_every_steps` steps)

plus a custom-scalars layout (the "discarding" dashboard; every block of a group as one
line of one chart), the discard strip as an image, the config as text, and per-block
kernel histograms every `histogram_every` epochs (`group{g}/block{b}/<layer>_kernel`,
which report/figures.py's weight-collapse figure reads back).
"""

import json
import math
import re

import keras
import numpy as np
import tensorflow as tf

from epsresnet_tf.config import towers
from epsresnet_tf.naming import parse_block_id, sort_block_ids
from epsresnet_tf.train import monitor

#: History row key → (run, tag) of its per-epoch scalar. A float key not listed here is
#: still written, under `other/<key>`, so that nothing a row holds is lost.
EPOCH_TAGS = {
    "discarded_count": ("train", "discarding/count"),
    "blocks_discarded_sum": ("train", "discarding/blocks_sum"),
    "discarded_ratio": ("train", "discarding/ratio"),
    "discarded_ratio_authors": ("train", "discarding/ratio_authors"),
    "lr": ("train", "schedule/lr"),
    "wd_factor": ("train", "schedule/wd_factor"),
    "train_error": ("train", "metrics/error"),
    "val_error": ("validation", "metrics/error"),
    "train_side_error": ("train", "metrics/side_error"),
    "val_side_error": ("validation", "metrics/side_error"),
    "train_top5_error": ("train", "metrics/top5_error"),
    "val_top5_error": ("validation", "metrics/top5_error"),
    "loss": ("train", "metrics/loss"),
    "val_loss": ("validation", "metrics/loss"),
    "xent": ("train", "metrics/xent"),
    "val_xent": ("validation", "metrics/xent"),
    "wd": ("train", "metrics/wd"),
}
LR_RESET_TAG = "schedule/lr_reset"
STRIP_TAG = "discarded_blocks"
CONFIG_TAG = "config"
STEP_TAGS = ("steps/loss", "steps/error", "steps/discarded_count", "steps/lr")

#: The "discarding" dashboard: (chart title, the tags it overlays); charts whose tags are
#: not written by a run (no validation) are left out of its layout; the gate kind's
#: hyper-parameters (ε) get a chart each after the learning rate's (`dashboard_layout`).
DISCARDING_CHARTS = (
    (
        "discarded count: the moving average the reset reads; sum of block averages",
        ("discarding/count", "discarding/blocks_sum"),
    ),
    (
        "discarded ratio: / gated blocks (ours); / the authors' 3n+2 (their Fig. 9)",
        ("discarding/ratio", "discarding/ratio_authors"),
    ),
    (
        "learning rate; lr_reset rises to it at the epochs the adaptive reset fired",
        ("schedule/lr", LR_RESET_TAG),
    ),
    ("error: train and validation runs", ("metrics/error",)),
    ("loss: train and validation runs", ("metrics/loss",)),
)

#: Per-block monitor fields → the title of their category (one chart per group); fields
#: not listed (another gate kind's) get their name. `closed`: folded until clicked.
BLOCK_FIELDS = {
    "discarded": ("is_discarded per block: EMA of 1 − T (1 = discarded)", False),
    "response_max": ("max|F| per block (the gate opens, T = 1, above ε)", False),
    "gate": ("T per block in the epoch's last step (0/1: view at smoothing 0)", True),
    "response_mean": ("mean|F| per block", True),
}


# --- what is written -------------------------------------------------------------------


def hyper_tag(name: str) -> str:
    """The tag of a gate kind's hyper-parameter (ε: schedule/epsilon)."""
    return f"schedule/{name}"


def epoch_scalars(row: dict, lr_resets=(), hyper=()) -> dict[str, dict[str, float]]:
    """{run: {tag: value}} of one history row's per-epoch scalars. `lr_resets` are the
    adaptive reset's epochs (finished epochs when it fired): the reset lr is first used in
    the epoch after, whose `schedule/lr_reset` is that lr. `hyper`: the row's keys that are
    the gate kind's hyper-parameters (ε), written as `hyper_tag`s."""
    out = {"train": {}, "validation": {}}
    tags = {**EPOCH_TAGS, **{h: ("train", hyper_tag(h)) for h in hyper}}
    for key, value in row.items():
        if isinstance(value, float) and key != "epoch":
            run, tag = tags.get(key, ("train", f"other/{key}"))
            out[run][tag] = value
    if "lr" in row:
        fired = row["epoch"] - 1 in set(lr_resets)
        out["train"][LR_RESET_TAG] = float(row["lr"]) if fired else 0.0
    for bid, entry in row.get("blocks", {}).items():
        for field, value in entry.items():
            out["train"][f"{bid}/{field}"] = float(value)
    return {run: tags for run, tags in out.items() if tags}


def _exact(tag):
    return f"^{re.escape(tag)}$"


def _chart(title, regexes):
    from tensorboard.plugins.custom_scalar import layout_pb2

    return layout_pb2.Chart(
        title=title, multiline=layout_pb2.MultilineChartContent(tag=list(regexes))
    )


def dashboard_layout(
    written: dict[str, dict[str, float]], with_steps: bool = False, hyper_labels=None
):
    """The custom-scalars layout (layout_pb2.Layout) for a run that writes the tags of
    `written` ({run: {tag: value}}, from `epoch_scalars`), and the `steps/…` tags if
    `with_steps`: it names only tags the run writes. `hyper_labels` ({hyper-parameter:
    label}): the gate kind's, one chart each after the learning rate's."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    tags = {t for run in written.values() for t in run}
    listed = list(DISCARDING_CHARTS)
    after_lr = next(i + 1 for i, (_, c) in enumerate(listed) if "schedule/lr" in c)
    listed[after_lr:after_lr] = [(t, (hyper_tag(h),)) for h, t in (hyper_labels or {}).items()]
    charts = [
        _chart(title, [_exact(t) for t in chart if t in tags])
        for title, chart in listed
        if any(t in tags for t in chart)
    ]
    categories = [layout_pb2.Category(title="discarding", chart=charts)]
    groups, fields = _groups_and_fields(tags)
    for field in fields:
        title, closed = BLOCK_FIELDS.get(field, (f"{field} per block", True))
        pattern = r"^group{}/block\d+/" + re.escape(field) + "$"
        charts = [_chart(f"group {g}: {field}", [pattern.format(g)]) for g in groups]
        if field == "discarded" and len(groups) > 1:  # every block on one chart
            charts.append(_chart("every block: discarded", [pattern.format(r"\d+")]))
        categories.append(layout_pb2.Category(title=title, chart=charts, closed=closed))
    if with_steps:
        steps = [_chart(t, [_exact(t)]) for t in STEP_TAGS]
        categories.append(layout_pb2.Category(title="per step (x = global step)", chart=steps))
    return layout_pb2.Layout(category=categories)


def _groups_and_fields(tags):
    """The groups and per-block fields among `tags` (`group{g}/block{b}/{field}`), fields
    in BLOCK_FIELDS's order first."""
    groups, fields = set(), set()
    for tag in tags:
        bid, _, field = tag.rpartition("/")
        if re.fullmatch(r"group\d+/block\d+", bid):
            groups.add(parse_block_id(bid)[0])
            fields.add(field)
    order = [f for f in BLOCK_FIELDS if f in fields] + sorted(fields - set(BLOCK_FIELDS))
    return sorted(groups), order


def config_markdown(cfg: dict) -> str:
    """The run's towers in words, then the config as a markdown JSON code block
    (TensorBoard's text plugin renders it), one key a line: json.dumps's indent would
    spread each schedule over a dozen lines."""
    count, images = towers(cfg)
    head = (
        f"towers: {count} × {images} images per step over {max(cfg.get('gpus') or 0, 1)} "
        "device(s): BatchNorm statistics and batch-scope gates over each tower's own "
        "images (docs/semantics.md §1)\n\n"
    )
    lines = [f"  {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in sorted(cfg.items())]
    return head + "```json\n{\n" + ",\n".join(lines) + "\n}\n```"


# --- paper Fig. 1's strip ----------------------------------------------------------------


def strip_grid(rows: list[dict], ids=None):
    """(block ids, epochs, grid): grid[i, j] is block ids[i]'s EMA of 1 − T after
    epochs[j] (NaN where a row lacks the block). `ids` default: the last row's blocks."""
    rows = [r for r in rows if r.get("blocks")]
    if ids is None:
        ids = sort_block_ids(rows[-1]["blocks"]) if rows else []
    grid = np.array(
        [[r["blocks"].get(b, {}).get("discarded", np.nan) for r in rows] for b in ids],
        np.float32,
    ).reshape(len(ids), len(rows))
    return list(ids), [r["epoch"] for r in rows], grid


def draw_discard_strip(fig, ax, ids, epochs, grid, removed=None, cert_ax=None, bar_on_top=False):
    """Paper Fig. 1's strip on `ax`: a row per block (labelled, groups separated), a column
    per epoch; kept blocks light blue, discarded black (never white on white), a colour bar
    as the legend, and with `removed` (a certificate's) a last column of what went. Report
    and TensorBoard both draw it here: TensorBoard's image puts the column and the legend on
    the right (axes_grid1); the report's column-wide figure gives `cert_ax` from its own
    layout and the legend on top, which constrained layout keeps inside the width."""
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.ticker import MaxNLocator
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    cmap = LinearSegmentedColormap.from_list("discarded", ["#9ecae1", "#000000"])
    cmap = cmap.with_extremes(bad="#dddddd")  # a block missing from an epoch's row
    rows = max(len(ids), 1)
    left, right = (epochs[0] - 0.5, epochs[-1] + 0.5) if epochs else (0.5, 1.5)
    shown = np.ma.masked_invalid(grid) if grid.size else np.full((rows, 1), np.nan)
    style = dict(cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    image = ax.imshow(shown, extent=(left, right, rows - 0.5, -0.5), **style)
    every = max(1, math.ceil(len(ids) / 60))  # at most 60 labels: ResNet-1001 has 333 blocks
    ax.set_yticks(range(0, len(ids), every), ids[::every], fontsize=7)
    groups_end = [
        i - 0.5
        for i in range(1, len(ids))
        if parse_block_id(ids[i])[0] != parse_block_id(ids[i - 1])[0]
    ]
    for y in groups_end:
        ax.axhline(y, color="white", linewidth=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    divider = make_axes_locatable(ax)
    column = None
    if removed is not None:
        column = cert_ax or divider.append_axes("right", size=0.35, pad=0.08, sharey=ax)
        verdict = [[1.0 if b in removed else 0.0] for b in ids]
        column.imshow(verdict, extent=(-0.5, 0.5, rows - 0.5, -0.5), **style)
        column.set_xticks([0], ["removed\n(cert.)"], fontsize=7)
        column.tick_params(labelleft=False, left=False)
        for y in groups_end:
            column.axhline(y, color="white", linewidth=2)
    if bar_on_top:
        below = [ax, column] if column is not None else ax
        bar = fig.colorbar(image, ax=below, location="top", shrink=0.6, aspect=25, pad=0.02)
    else:
        bar = fig.colorbar(image, cax=divider.append_axes("right", size=0.12, pad=0.1))
    bar.set_ticks([0, 0.5, 1], labels=["0 kept", "0.5", "1 discarded"], fontsize=7)
    bar.set_label("EMA of 1 − T", fontsize=8)
    return image


def strip_image(rows: list[dict], title: str = "discarded blocks") -> np.ndarray:
    """The strip of `rows` as an RGB uint8 array (H, W, 3), 800 px wide, a row per block
    tall enough for its label: readable at 1:1 in TensorBoard's image tab."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ids, epochs, grid = strip_grid(rows)
    per_block = min(0.2, 12.0 / max(len(ids), 1))  # inches; at most ~13 in tall
    fig = Figure(figsize=(8, 1.6 + per_block * max(len(ids), 4)), dpi=100)
    canvas = FigureCanvasAgg(fig)  # no pyplot: no global figure list, safe in a callback
    ax = fig.add_subplot()
    draw_discard_strip(fig, ax, ids, epochs, grid)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


# --- the callback ------------------------------------------------------------------------


class TensorBoardCallback(keras.callbacks.Callback):
    """Writes the tags above into `train_dir` and `validation_dir` (step = finished epochs;
    `steps/…` at global steps). Per-step scalars are read every `summary_every_steps` steps
    from the logs Keras already hands the batch hooks and from the model's variables: the
    training step itself gains nothing. `lr_schedule`'s `resets` (the adaptive reset's
    epochs; none for a fixed schedule) give `schedule/lr_reset`."""

    def __init__(self, train_dir, validation_dir, state, cfg: dict, lr_schedule=None, writer=None):
        from epsresnet_tf.train.writer import EpochWriter

        super().__init__()
        self.dirs = {"train": str(train_dir), "validation": str(validation_dir)}
        self.state, self.cfg, self.lr_schedule = state, cfg, lr_schedule
        self.histogram_every = int(cfg.get("histogram_every") or 0)
        self.every_steps = int(cfg.get("summary_every_steps") or 0)
        self.jobs = writer or EpochWriter(threaded=False)  # the epoch's writes (writer.py)
        self.writers: dict = {}
        self.step = 0
        self.layout_written = False
        self.kernel_reader = None

    def writer(self, run):
        if run not in self.writers:  # created on first use: no validation/ without one
            self.writers[run] = tf.summary.create_file_writer(self.dirs[run])
        return self.writers[run]

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())
        with self.writer("train").as_default(step=len(self.state.rows)):
            tf.summary.text(CONFIG_TAG, config_markdown(self.cfg))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if not self.every_steps or self.step % self.every_steps or not logs:
            return
        values = {
            "steps/loss": logs.get("loss"),  # Keras's running mean since the epoch began
            "steps/error": 1.0 - logs["acc"] if "acc" in logs else None,
            "steps/discarded_count": self.model.discarded_count_value(),
            "steps/lr": float(self.model.optimizer.learning_rate.numpy()),
        }
        with self.writer("train").as_default(step=self.step):
            for tag, value in values.items():
                if value is not None:
                    tf.summary.scalar(tag, float(value))

    def on_epoch_end(self, epoch, logs=None):
        """Copies what the epoch writes (the scalars, the kernels of a histogram epoch, the
        rows of the strip) and hands the writing to the run's writer thread: the events,
        the histograms and the strip's drawing take the steps nothing."""
        if self.state.nan or not self.state.rows:
            return
        step = self.state.rows[-1]["epoch"]
        written = epoch_scalars(
            self.state.rows[-1],
            getattr(self.lr_schedule, "resets", ()),
            hyper=self.model.hyper_labels,
        )
        kernels = {}
        if self.histogram_every and step % self.histogram_every == 0:
            pairs = [
                (f"{bid}/{name}", var)
                for bid, named in monitor.block_kernels(self.model.net).items()
                for name, var in named
            ]
            if self.kernel_reader is None:  # the same kernels every histogram epoch
                self.kernel_reader = monitor.VariableReader([var for _, var in pairs])
            values = self.kernel_reader()
            kernels = {tag: value for (tag, _), value in zip(pairs, values)}
        rows = list(self.state.rows) if self.state.rows[-1].get("blocks") else None
        self.jobs.submit("tensorboard", self._write_epoch, step, written, kernels, rows)

    def _write_epoch(self, step, written, kernels, rows):
        for run, tags in written.items():
            with self.writer(run).as_default(step=step):
                for tag, value in tags.items():
                    tf.summary.scalar(tag, value)
        with self.writer("train").as_default(step=step):
            if not self.layout_written:
                self._write_layout(written)
            for tag, values in kernels.items():
                tf.summary.histogram(tag, values)
            if rows:
                title = f"{self.cfg.get('name') or 'run'}: discarded blocks after epoch {step}"
                tf.summary.image(STRIP_TAG, strip_image(rows, title)[None], max_outputs=1)
        for w in self.writers.values():
            w.flush()

    def _write_layout(self, written):
        from tensorboard.plugins.custom_scalar import summary as layout_summary

        layout = dashboard_layout(
            written, with_steps=bool(self.every_steps), hyper_labels=self.model.hyper_labels
        )
        layout = layout_summary.pb(layout).SerializeToString()
        tf.summary.experimental.write_raw_pb(layout, step=0)
        self.layout_written = True

    def on_train_end(self, logs=None):
        self.jobs.wait()
        for w in self.writers.values():
            w.close()
        self.writers = {}
