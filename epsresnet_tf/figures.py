"""The one figure registry and the one save, shared by `epsresnet report` (report/) and
`make reproduce` (reproduce/): a figure is a function registered under a scope and a file
stem; every figure file is written by `save`, with fixed metadata so that the same runs give
the same bytes."""

from pathlib import Path
from typing import Any, Callable, NamedTuple

from epsresnet_tf.plotting import pyplot

#: The scopes a figure is drawn in: once per reported run, once over several reported runs,
#: once per `make reproduce` piece (its stem is the piece's key).
RUN, RUNS, PIECE = "run", "runs", "piece"


def always(*_):
    return True


class Figure(NamedTuple):
    stem: str
    draw: Callable
    when: Callable = always


#: scope -> its figures in registration order (the order they are drawn in).
REGISTRY: dict[str, list] = {RUN: [], RUNS: [], PIECE: []}


def register(scope: str, stem: str, when: Callable | None = None):
    """Register the decorated function as the `scope` figure `stem`, drawn when `when`
    holds for its input (always without one)."""

    def register_figure(fn):
        REGISTRY[scope].append(Figure(stem, fn, when or always))
        return fn

    return register_figure


def registered(scope: str) -> list:
    """The figures of `scope`, looked up at each call (a test may replace the list)."""
    return REGISTRY[scope]


class Look(NamedTuple):
    """How a family of figures is written: the formats (suffix -> the metadata key its
    caption goes under, or None), fixed metadata, dpi (None: the rc style's) and whether
    the layout is tightened first."""

    formats: dict
    metadata: dict = {}
    dpi: float | None = None
    tight: bool = False


def save(fig: Any, path: Path, look: Look, caption: str | None = None) -> str | bool:
    """Write `fig` in each of `look`'s formats beside `path`, the title and caption in each
    file's metadata; close it; return the caption (True without one)."""
    if look.tight:
        fig.tight_layout()
    title = fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "") or path.stem
    for suffix, key in look.formats.items():
        meta = dict(look.metadata)
        if key is not None:
            meta.update({"Title": " ".join(title.split()), key: caption})
        extra = {} if look.dpi is None else {"dpi": look.dpi}
        fig.savefig(path.with_suffix(suffix), metadata=meta, **extra)
    pyplot().close(fig)
    return caption if caption is not None else True
