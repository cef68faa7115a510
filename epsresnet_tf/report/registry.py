"""The report's figure decorators: report figures register in the one registry
(epsresnet_tf/figures.py) that `make reproduce`'s figures share; `make_report` (writer.py)
draws every one."""

from epsresnet_tf.figures import REGISTRY, RUN, RUNS, register

#: Figures drawn for every run: (file stem, function, whether the run has its data). A new
#: figure is one function with the decorator; `make_report` draws every registered one.
PER_RUN_FIGURES = REGISTRY[RUN]
#: Figures drawn once over several runs: (file stem, function(runs, summary rows, path), _).
COMBINED_FIGURES = REGISTRY[RUNS]


def per_run_figure(stem, when=None):
    """Register `fn(run_data, path)` as a figure of every run for which `when(run)` holds.
    `fn` writes `path` (the PNG; `save_figure` adds the PDF and SVG) and returns its caption,
    or False when it drew nothing."""
    return register(RUN, stem, when)


def combined_figure(stem):
    """Register `fn(runs, summary_rows, path)` as a figure drawn once when several runs are
    reported together; it returns its caption (or False when it drew nothing)."""
    return register(RUNS, stem)
