"""`epsresnet report RUN_DIR…`: the paper's tables and figures from run folders.

Reads per run: config.json, history.jsonl (one row per epoch), reduced/certificate.json
(after `compress`), ablation/*.json (after `ablate`), tb/train/ kernel histograms (per epoch) or
model.keras (final kernels). Paths that are not run folders (`runs/report` in `runs/*`) are
skipped with one line. Writes to --out (default: RUN_DIR/report for one run, the runs'
common parent's report/ for several):

  tables.md                      full vs reduced: error, blocks, layers, params, memory (Figs. 6–7)
  figures.md                     every figure with its caption (the full run names)
  report.json                    the runs, the summary rows and the files written (the manifest)
  [run-]discarded_ratio.*        validation error and discarded ratio against epoch (Fig. 9)
  [run-]groups.*                 kept / discarded blocks per group (Fig. 10)
  [run-]strip.*                  which blocks went, epoch by epoch (Fig. 1's strip)
  [run-]weight_collapse.*        a discarded and a kept block's kernel over the epochs (Fig. 5)
  [run-]removal_curves.*         error against blocks removed, per order (gates paper Fig. 5)
  epsilon_sweep.*                ε against compression and error, one line per group (Fig. 8)

Every figure is written as PNG (300 dpi), PDF and SVG, drawn at a paper's column width
(COLUMN_WIDTH, fonts ≥ MIN_FONT_PT) in one style (PAPER_STYLE). Files are prefixed with the
run's name when several runs are reported together; runs are compared (one ε trend) only
within a group of the same dataset, architecture and schedule (`comparison_groups`).
Running `report` again refreshes the report through outputs.py's staged swap: the files the
manifest lists are replaced, anything else in the folder (notes) stays.
"""

from epsresnet_tf.report.data import (
    SCHEDULE_KEYS,
    RunData,
    comparison_groups,
    read_runs,
    summary_rows,
)
from epsresnet_tf.report.figures import (
    COLLAPSED_SPREAD,
    COLUMN_WIDTH,
    DISCARDED_LEVEL,
    ERROR_COLOR,
    FIGURE_FORMATS,
    MIN_FONT_PT,
    PAPER_STYLE,
    PERCENTILES,
    Collapse,
    _histogram_percentiles,
    discarded_since,
    fig_discarded_ratio,
    fig_epsilon_sweep,
    fig_groups,
    fig_removal_curves,
    fig_strip,
    fig_weight_collapse,
    fit_title,
    paper_style,
    run_title,
    save_figure,
    short_name,
    spread_ratio,
)
from epsresnet_tf.report.registry import (
    COMBINED_FIGURES,
    PER_RUN_FIGURES,
    combined_figure,
    per_run_figure,
)
from epsresnet_tf.report.tables import tables
from epsresnet_tf.report.writer import (
    MANIFEST,
    REPORT_FILES,
    default_out,
    file_prefixes,
    make_report,
    replaced_names,
)

__all__ = [
    "SCHEDULE_KEYS",
    "RunData",
    "comparison_groups",
    "read_runs",
    "summary_rows",
    "COLLAPSED_SPREAD",
    "COLUMN_WIDTH",
    "DISCARDED_LEVEL",
    "ERROR_COLOR",
    "FIGURE_FORMATS",
    "MIN_FONT_PT",
    "PAPER_STYLE",
    "PERCENTILES",
    "Collapse",
    "_histogram_percentiles",
    "discarded_since",
    "fig_discarded_ratio",
    "fig_epsilon_sweep",
    "fig_groups",
    "fig_removal_curves",
    "fig_strip",
    "fig_weight_collapse",
    "fit_title",
    "paper_style",
    "run_title",
    "save_figure",
    "short_name",
    "spread_ratio",
    "COMBINED_FIGURES",
    "PER_RUN_FIGURES",
    "combined_figure",
    "per_run_figure",
    "tables",
    "MANIFEST",
    "REPORT_FILES",
    "default_out",
    "file_prefixes",
    "make_report",
    "replaced_names",
]
