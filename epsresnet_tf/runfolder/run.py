"""Reading a finished run: read_run -> RunInfo (its config and the rebuilt net's options),
the weights `train --init-from` starts from (read_init_weights, NET_KEYS), the dataset
folder a command on a run reads (run_data_dir), read_history, load_model and find_run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from epsresnet_tf.config import gate_batch, known_defaults, saved_config
from epsresnet_tf.data import datasets
from epsresnet_tf.data.readers import default_data_dir
from epsresnet_tf.errors import UserError
from epsresnet_tf.runconfig import RunConfig
from epsresnet_tf.runfolder.atomic import PathLike
from epsresnet_tf.runfolder.layout import RunFolder
from epsresnet_tf.runfolder.names import HISTORY, MODEL


@dataclasses.dataclass
class RunInfo:
    """What compression, evaluation and reports need from a run folder: its config.json as
    training wrote it, and the facts derived from it (epsresnet_tf.config)."""

    root: Path
    config: dict
    arch: str
    dataset: str
    build_options: dict
    batch_size: int  # per replica: what one ε-gate saw per step
    mean: str
    seed: int

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.root)

    @property
    def model_path(self) -> Path:
        return self.root / MODEL

    @property
    def history_path(self) -> Path:
        return self.root / HISTORY


def read_run(run_dir: PathLike) -> RunInfo:
    """The run in `run_dir`; UserError (one line) when it is not a run folder."""
    folder = RunFolder(run_dir)
    cfg = folder.read_config()
    full = saved_config(cfg)  # keys missing from an older or hand-written config.json

    info = datasets.get(cfg["dataset"])
    # One assembly of the net's options (RunConfig's), so a rebuild matches training's; an
    # older config.json lacks keys a rebuild never reads, which today's defaults fill.
    options = RunConfig.from_dict({**known_defaults(), **full}).net_options()
    options.update(classes=info.num_classes, input_shape=tuple(info.image_shape))
    return RunInfo(
        folder.root,
        cfg,
        cfg["arch"],
        cfg["dataset"],
        options,
        gate_batch(cfg),
        full["mean"],
        int(full["seed"]),
    )


#: Config keys that decide which variables a net has: `train --init-from` needs them equal.
NET_KEYS = ("arch", "gate", "side_head", "model_options")


def read_init_weights(
    source: PathLike, cfg: Mapping[str, Any], shapes: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """The weights `train --init-from SOURCE` starts a run of `cfg` with: the net's
    variables (weights, BatchNorm statistics; not the optimizer's, the epoch or the history)
    from SOURCE's newest valid checkpoint, where they come first. UserError (one line)
    unless SOURCE is a run with a checkpoint of the net `cfg` builds (`shapes`: its
    variables' shapes, in order)."""
    folder = RunFolder(source)
    theirs, ours = saved_config(folder.read_config()), saved_config(cfg)
    diff = [k for k in NET_KEYS if theirs.get(k) != ours.get(k)]
    if diff:
        shown = ", ".join(f"{k} {theirs.get(k)!r}, this run's {ours.get(k)!r}" for k in diff)
        raise UserError(
            f"--init-from {source}: its net differs from this run's ({shown}); "
            "initialise from a run of the same architecture"
        )
    loaded = folder.load_latest()
    if loaded is None:
        raise UserError(f"--init-from {source}: no checkpoint there yet; train it first")
    arrays = loaded[0][: len(shapes)]
    for i, shape in enumerate(shapes):
        have = tuple(arrays[i].shape) if i < len(arrays) else None
        if have != tuple(shape):
            raise UserError(
                f"--init-from {source}: its net's variable {i} has shape {have}, this run's "
                f"{tuple(shape)} (another dataset's classes or input?)"
            )
    return arrays


def run_data_dir(given: PathLike | None, run_dir: PathLike | None = None) -> str:
    """The dataset folder for a command on the run `run_dir`: --data-dir when given, else
    the folder its training read (recorded in the run folder) while it is there, else
    default_data_dir()."""
    if given is not None:
        return str(given)
    if run_dir is not None:
        recorded = RunFolder(run_dir).data_dir()
        if recorded is not None:
            return str(recorded)
    return default_data_dir()


def read_history(run_dir: PathLike) -> list[dict[str, Any]]:
    """The rows of a run's history.jsonl ([] when there is none)."""
    return RunFolder(run_dir).read_history()


def load_model(path: PathLike) -> Any:
    """A saved .keras net (importing our layers registers them: no custom_objects)."""
    import keras

    from epsresnet_tf import layers  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path} not found: train the run to the end first (`epsresnet train`) "
            "or give the path of a .keras file"
        )
    return keras.models.load_model(path, compile=False)


def find_run(model_path: PathLike) -> Path | None:
    """The run folder a saved net belongs to (its model.keras, or reduced/reduced.keras)."""
    path = Path(model_path)
    for parent in (path.parent, path.parent.parent):
        if RunFolder.is_run_folder(parent):
            return parent
    return None
