"""Where report figures are registered: `make_report` (writer.py) draws every one."""

#: Figures drawn for every run: (file stem, function, whether the run has its data). A new
#: figure is one function with the decorator; `make_report` draws every registered one.
PER_RUN_FIGURES = []
#: Figures drawn once over several runs: (file stem, function(runs, summary rows, path)).
COMBINED_FIGURES = []


def per_run_figure(stem, when=lambda r: True):
    """Register `fn(run_data, path)` as a figure of every run for which `when(run)` holds.
    `fn` writes `path` (the PNG; `save_figure` adds the PDF and SVG) and returns its caption,
    or False when it drew nothing."""

    def register_figure(fn):
        PER_RUN_FIGURES.append((stem, fn, when))
        return fn

    return register_figure


def combined_figure(stem):
    """Register `fn(runs, summary_rows, path)` as a figure drawn once when several runs are
    reported together; it returns its caption (or False when it drew nothing)."""

    def register_figure(fn):
        COMBINED_FIGURES.append((stem, fn))
        return fn

    return register_figure
