"""The run folder: its layout, reading and writing it, and its checkpoints.

One module knows what `epsresnet train` writes and what `compress`, `ablate`, `evaluate`,
`report` and `sweep-eps` read back and add::

    runs/<name>/
      config.json          the resolved config (epsresnet_tf.config), written once
      history.jsonl        one JSON row per finished epoch
      tb/                  TensorBoard events
      ckpt/epoch-00005.npz checkpoints: every variable + the JSON state of the loop
      model.keras          the final net (written when training ends)
      reduced/             `compress`: reduced.keras, saved_model/, certificate.json
      ablation/            `ablate`: <order>.json
      report/              `report` of this run alone: tables.md and the figures

    RunFolder(root)            the paths above; config check; save/load/retention of checkpoints
    read_run(run_dir) -> RunInfo   what compression, evaluation and reports need of a run
    read_history(run_dir) -> rows
    load_model(path) -> keras.Model
    find_run(model_path) -> the run folder a saved net belongs to, or None
    atomic_write_text(path, text)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from epsresnet_tf import jsonsafe
from epsresnet_tf.config import gate_batch, saved_config
from epsresnet_tf.errors import UserError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Names inside a run folder.
CONFIG = "config.json"
HISTORY = "history.jsonl"
TENSORBOARD = "tb"
CHECKPOINTS = "ckpt"
MODEL = "model.keras"
REDUCED = "reduced"
ABLATION = "ablation"
REPORT = "report"
#: Names inside reduced/ (what `compress` exports).
REDUCED_MODEL = "reduced.keras"
SAVED_MODEL = "saved_model"
CERTIFICATE = "certificate.json"


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk and rename it over
    `path`: a reader sees the old file or the new one, never part of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunFolder:
    """`runs/<name>/`: paths, config check, checkpoints."""

    KEEP = 2  # checkpoints kept (the newest and one before, in case the newest is bad)
    #: Config keys that only say which checkpoints to keep: they do not change the training,
    #: so a resume may change them (config.json is then updated).
    RETENTION_KEYS = ("keep_checkpoints_at", "keep_checkpoints_every")

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.config = self.root / CONFIG
        self.history = self.root / HISTORY
        self.tb = self.root / TENSORBOARD
        self.ckpt = self.root / CHECKPOINTS
        self.model = self.root / MODEL
        self.reduced = self.root / REDUCED
        self.ablation = self.root / ABLATION
        self.report = self.root / REPORT
        self.certificate = self.reduced / CERTIFICATE
        self.reduced_model = self.reduced / REDUCED_MODEL

    @staticmethod
    def is_run_folder(path: PathLike) -> bool:
        return (Path(path) / CONFIG).is_file()

    # --- config ---

    def check_or_create(self, cfg: Mapping[str, Any]) -> bool:
        """True if this is a resume. A folder with another config is refused."""
        if self.config.exists():
            self.check_config(cfg)
            old = json.loads(self.config.read_text())
            if any(old.get(k) != cfg.get(k) for k in self.RETENTION_KEYS if k in cfg):
                old.update({k: cfg[k] for k in self.RETENTION_KEYS if k in cfg})
                atomic_write_text(
                    self.config, json.dumps(old, indent=2, sort_keys=True, allow_nan=False) + "\n"
                )
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise UserError(f"{self.root} exists and is not a run folder (no {CONFIG})")
        self.root.mkdir(parents=True, exist_ok=True)
        self.ckpt.mkdir(exist_ok=True)
        atomic_write_text(
            self.config, json.dumps(cfg, indent=2, sort_keys=True, allow_nan=False) + "\n"
        )
        return False

    def check_config(self, cfg: Mapping[str, Any]) -> None:
        """UserError unless config.json holds `cfg` (the retention keys aside). Reads only."""
        old = json.loads(self.config.read_text())
        diff = sorted(
            k
            for k in set(old) | set(cfg)
            if k not in self.RETENTION_KEYS and old.get(k) != cfg.get(k)
        )
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {cfg.get(k)!r}" for k in diff[:3])
            raise UserError(
                f"{self.root} holds a run with another config ({shown}); "
                f"choose another --out or name"
            )

    def read_config(self) -> dict[str, Any]:
        """config.json as training wrote it; UserError (one line) when it is missing, not
        JSON, or lacks the keys every run has."""
        if not self.config.is_file():
            raise UserError(
                f"{self.root} is not a run folder (no {CONFIG}): give the folder "
                "`epsresnet train` wrote, e.g. runs/<name>"
            )
        try:
            cfg = json.loads(self.config.read_text())
        except json.JSONDecodeError as err:
            raise UserError(
                f"{self.config} is not valid JSON ({err}); restore it from the run"
            ) from err
        for key in ("arch", "dataset"):
            if key not in cfg:
                raise UserError(
                    f"{self.config} lacks {key!r}: it was not written by `epsresnet train`"
                )
        return cfg

    # --- history ---

    def read_history(self) -> list[dict[str, Any]]:
        """The rows of history.jsonl ([] when there is none yet)."""
        if not self.history.is_file():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]

    def write_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace history.jsonl with `rows` (atomically)."""
        atomic_write_text(self.history, "".join(jsonsafe.dumps(r) + "\n" for r in rows))

    # --- checkpoints ---

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt.glob("epoch-*.npz")) if self.ckpt.exists() else []

    @staticmethod
    def epoch_of(path: PathLike) -> int | None:
        """The epoch of `ckpt/epoch-00005.npz` (5), or None for another name."""
        try:
            return int(Path(path).stem.split("-", 1)[1])
        except (IndexError, ValueError):
            return None

    def checkpoint_path(self, epoch: int) -> Path:
        return self.ckpt / f"epoch-{int(epoch):05d}.npz"

    def kept_epochs(self) -> list[int]:
        """The epochs whose checkpoints are in ckpt/, oldest first."""
        return [e for e in map(self.epoch_of, self.checkpoints()) if e is not None]

    def kept_forever(self, epoch: int) -> bool:
        """Whether config.json's keep_checkpoints_at / keep_checkpoints_every keep `epoch`'s
        checkpoint besides the KEEP newest (for `epsresnet compress --epoch`)."""
        try:
            cfg = json.loads(self.config.read_text())
        except (OSError, ValueError):
            return False
        every = int(cfg.get("keep_checkpoints_every") or 0)
        return epoch in (cfg.get("keep_checkpoints_at") or ()) or bool(every and epoch % every == 0)

    def save_checkpoint(
        self, epoch: int, arrays: Sequence[np.ndarray], state: Mapping[str, Any]
    ) -> Path:
        """One .npz (variables + JSON state), written to a temporary name and renamed. Older
        checkpoints go, except the KEEP newest and those the config keeps forever."""
        self.ckpt.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_path(epoch)
        fd, tmp = tempfile.mkstemp(dir=self.ckpt, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                state=np.frombuffer(json.dumps(state).encode(), np.uint8),
                **{f"v{i:05d}": a for i, a in enumerate(arrays)},
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in self.checkpoints()[: -self.KEEP]:
            e = self.epoch_of(old)
            if e is None or not self.kept_forever(e):
                old.unlink()
        return path

    def load(self, path: PathLike) -> tuple[list[np.ndarray], dict[str, Any]]:
        """(arrays, state) of one checkpoint file."""
        with np.load(path) as z:
            state = json.loads(bytes(z["state"]).decode())
            names = sorted(k for k in z.files if k.startswith("v"))
            return [z[k] for k in names], state

    def load_latest(self) -> tuple[list[np.ndarray], dict[str, Any]] | None:
        """(arrays, state) of the newest readable checkpoint, or None."""
        for path in reversed(self.checkpoints()):
            try:
                return self.load(path)
            except (OSError, ValueError, KeyError) as err:
                log.warning("skipping unreadable checkpoint %s: %s", path, err)
        return None

    # --- the final net ---

    def save_model(self, net: Any) -> Path:
        """model.keras, saved under a temporary name and renamed."""
        tmp = self.root / f".model.tmp{Path(MODEL).suffix}"
        net.save(tmp)
        os.replace(tmp, self.model)
        return self.model


# --- reading a finished run --------------------------------------------------------------


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
    from epsresnet_tf.data import datasets
    from epsresnet_tf.gates import get_gate

    info = datasets.get(cfg["dataset"])
    options = dict(full["model_options"] or {})
    gate = full["gate"]
    options.update(
        classes=info.num_classes,
        input_shape=tuple(info.image_shape),
        gate=gate,
        weight_decay=full["weight_decay"],
    )
    if get_gate(gate) is not None:  # the kind's own build settings (ε, scope, group …)
        options.update(get_gate(gate).net_options(full))
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


def read_history(run_dir: PathLike) -> list[dict[str, Any]]:
    """The rows of a run's history.jsonl ([] when there is none)."""
    return RunFolder(run_dir).read_history()


def load_model(path: PathLike) -> Any:
    """A saved .keras net (our layers are registered, so no custom_objects)."""
    import keras

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
