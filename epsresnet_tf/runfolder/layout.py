"""A run folder's layout and its readers: RunFolder (the paths of names.py; open() with the
writer's lock, the start-up sweep and --restart; the config check and FUTURE_ONLY changes;
data.json; history.jsonl; the certificate and ablations; model.keras) and config_text.
Its checkpoint methods are checkpoints.Checkpoints'."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from epsresnet_tf import jsonsafe
from epsresnet_tf.config import FUTURE_ONLY, upgrade_legacy
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder.atomic import (
    PathLike,
    atomic_path,
    atomic_write_text,
    is_temporary,
    raise_disk_error,
    read_json,
    sweep_temporary_files,
    warn,
)
from epsresnet_tf.runfolder.checkpoints import Checkpoints
from epsresnet_tf.runfolder.lock import RunLock
from epsresnet_tf.runfolder.names import (
    ABLATION,
    CERTIFICATE,
    CHANGES,
    CHECKPOINTS,
    CONFIG,
    CORRUPT,
    DATA,
    HISTORY,
    LOCK,
    MODEL,
    REDUCED,
    REDUCED_MODEL,
    REPORT,
    TB_RUNS,
    TENSORBOARD,
)


class History(NamedTuple):
    rows: list[dict[str, Any]]
    cut_short: bool  # the last line was a half-written row (a kill mid-write), left out


def last_val_error(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The last validation (test split) error of a history; None when no epoch has one."""
    for row in reversed(rows):
        if row.get("val_error") is not None:
            return float(row["val_error"])
    return None


class RunFolder(Checkpoints):
    """`runs/<name>/`: paths, the writer's lock, config check, checkpoints."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.config = self.root / CONFIG
        self.changes = self.root / CHANGES
        self.data = self.root / DATA
        self.history = self.root / HISTORY
        self.tb = self.root / TENSORBOARD
        self.tb_train, self.tb_validation = (self.tb / run for run in TB_RUNS)
        self.ckpt = self.root / CHECKPOINTS
        self.model = self.root / MODEL
        self.reduced = self.root / REDUCED
        self.ablation = self.root / ABLATION
        self.report = self.root / REPORT
        self.certificate = self.reduced / CERTIFICATE
        self.reduced_model = self.reduced / REDUCED_MODEL
        self.corrupt = self.ckpt / CORRUPT
        self._lock: RunLock | None = None
        self._verified: set[tuple[str, int, int]] = set()  # (name, size, mtime) checked

    @staticmethod
    def is_run_folder(path: PathLike) -> bool:
        return (Path(path) / CONFIG).is_file()

    # --- the one writer ---

    def open(self, restart: bool = False) -> RunFolder:
        """Make the folder and take its lock (UserError naming the holder when another
        `train` has it), then remove dead writers' temporary files. `restart` first moves
        an existing run aside to `<name>.old-<time>/` (never deletes it)."""
        if self._lock is not None:  # already ours
            return self
        self._make_root()
        lock = RunLock(self.root)
        lock.acquire()
        self._lock = lock
        if restart and self._has_content():
            self._move_aside()
        for p in sweep_temporary_files(self.root, self.ckpt):
            warn(f"removed {p}, left by an interrupted write")
        return self

    def close(self) -> None:
        """Release the lock (the OS releases it anyway when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError as err:  # the folder, or a parent, is a file
            raise UserError(
                f"cannot make the run folder {self.root}: {err.filename} is a file, not a "
                "folder; choose another --out"
            ) from err
        except NotADirectoryError as err:
            raise UserError(
                f"cannot make the run folder {self.root}: a parent is a file, not a folder; "
                "choose another --out"
            ) from err
        except OSError as err:
            raise_disk_error(err, self.root)
        if not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run folder; choose another --out")

    def _has_content(self) -> bool:
        return any(p.name != LOCK and not is_temporary(p.name) for p in self.root.iterdir())

    def _move_aside(self) -> None:
        """--restart: rename the run to `<name>.old-<time>` and lock a fresh folder."""
        stem = f"{self.root.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        aside, n = self.root.with_name(stem), 1
        while aside.exists():
            n += 1
            aside = self.root.with_name(f"{stem}-{n}")
        old = self._lock
        os.replace(self.root, aside)
        print(f"--restart: moved the old run aside to {aside}")
        self._make_root()
        lock = RunLock(self.root)
        lock.acquire()
        self._lock = lock
        if old is not None:  # its lock file moved with the folder: no stale lock there
            old.path = aside / LOCK
            old.release()

    # --- config ---

    def check_or_create(self, cfg: Mapping[str, Any]) -> bool:
        """True if this is a resume. A folder with another config is refused, unless only
        config.FUTURE_ONLY keys differ: config.json then takes their new values."""
        if self.config.exists():
            self.check_config(cfg)
            self._change_future(cfg)
            return True
        if self.root.exists() and self._has_content():
            raise UserError(f"{self.root} exists and is not a run folder (no {CONFIG})")
        self._make_root()
        try:
            self.ckpt.mkdir(exist_ok=True)
        except OSError as err:
            raise_disk_error(err, self.ckpt)
        atomic_write_text(self.config, config_text(cfg))
        return False

    def check_config(self, cfg: Mapping[str, Any]) -> None:
        """UserError unless config.json holds `cfg`, config.FUTURE_ONLY keys aside; the one
        line names the differing keys and the way out. Reads only. A config.json of an
        older version is compared in today's form (`upgrade_legacy`)."""
        old = {"precision": "float32", **upgrade_legacy(self.read_config())}
        cfg = {"precision": "float32", **upgrade_legacy(cfg)}
        diff = sorted(
            k for k in set(old) | set(cfg) if k not in FUTURE_ONLY and old.get(k) != cfg.get(k)
        )
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {cfg.get(k)!r}" for k in diff[:3])
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            raise UserError(
                f"{self.root} holds a run with another config ({shown}{more}); a resume may "
                f"change only {', '.join(sorted(FUTURE_ONLY))}: give --name for a new run, "
                "or --restart to move this one aside"
            )

    def _change_future(self, cfg: Mapping[str, Any]) -> None:
        """A resume with other config.FUTURE_ONLY values: changes.jsonl gets a row (the epoch
        it takes effect after, old and new values), then config.json the new values, each
        written atomically. `epochs` may not drop below the epochs trained."""
        old = self.read_config()
        changed = sorted(k for k in FUTURE_ONLY if k in cfg and old.get(k) != cfg[k])
        if not changed:
            return
        trained = len(self.read_history())
        if cfg.get("epochs", trained) < trained:
            raise UserError(
                f"{self.root} has trained {trained} epochs: --epochs {cfg['epochs']} would "
                f"end it before that; give {trained} or more"
            )
        known = [k for k in changed if k in old]  # keys older runs lack are no change
        if known:
            row = {
                "after_epoch": trained,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "changes": {k: {"old": old[k], "new": cfg[k]} for k in known},
            }
            before = self.changes.read_text() if self.changes.is_file() else ""
            atomic_write_text(self.changes, before + jsonsafe.dumps(row) + "\n")
            shown = ", ".join(f"{k} {old[k]!r} -> {cfg[k]!r}" for k in known)
            print(f"{self.root}: {shown} after epoch {trained} (recorded in {CHANGES})")
        atomic_write_text(self.config, config_text({**old, **{k: cfg[k] for k in changed}}))

    def read_changes(self) -> list[dict[str, Any]]:
        """The rows of changes.jsonl ([] when no resume changed the config)."""
        if not self.changes.is_file():
            return []
        return [json.loads(line) for line in self.changes.read_text().splitlines() if line]

    # --- the data folder ---

    def record_data_dir(self, data_dir: PathLike) -> None:
        """data.json: the dataset folder training read (absolute), for compress, evaluate
        and ablate to reuse. Rewritten (atomically) only when it changes."""
        text = json.dumps({"data_dir": str(Path(data_dir).resolve())}) + "\n"
        if not (self.data.is_file() and self.data.read_text() == text):
            atomic_write_text(self.data, text)

    def data_dir(self) -> Path | None:
        """The dataset folder training read, if recorded and still a folder."""
        try:
            recorded = Path(json.loads(self.data.read_text())["data_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return recorded if recorded.is_dir() else None

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
        """The rows of history.jsonl ([] when there is none yet); see history_rows."""
        return self.history_rows().rows

    def history_rows(self) -> "History":
        """history.jsonl's rows, and whether its last line was cut short (a kill during
        `append_history`: no newline, not JSON), which is not a row. Any other line that is
        not JSON: UserError naming the file and the line (resume, compress and report all
        read the history here, so they agree on what a row is)."""
        if not self.history.is_file():
            return History([], False)
        data = self.history.read_bytes()
        lines = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
        rows = []
        for i, (number, line) in enumerate(lines):
            try:  # bytes: a flipped byte that is not UTF-8 is reported with its line too
                rows.append(json.loads(line.decode()))
            except ValueError as err:
                if i == len(lines) - 1 and not data.endswith(b"\n"):
                    return History(rows, True)
                raise UserError(
                    f"{self.history}, line {number}: not valid JSON ({err}); repair or "
                    "delete that line (one epoch's row)"
                ) from err
        return History(rows, False)

    def read_certificate(self) -> dict[str, Any] | None:
        """reduced/certificate.json (None before `compress`)."""
        if not self.certificate.is_file():
            return None
        return read_json(self.certificate, "run `epsresnet compress RUN_DIR --force` again")

    def read_ablations(self) -> dict[str, Any]:
        """ablation/<order>.json by order name ({} before `ablate`)."""
        fix = "run `epsresnet ablate --force` again"
        return {p.stem: read_json(p, fix) for p in sorted(self.ablation.glob("*.json"))}

    def write_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace history.jsonl with `rows` (atomically)."""
        atomic_write_text(self.history, "".join(jsonsafe.dumps(r) + "\n" for r in rows))

    def append_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append `rows` (the epochs finished since the last write) to history.jsonl: a run
        of 1,000 epochs writes each row once, not the whole file every epoch (issue 15).
        All or nothing: a failed append (a full disk) cuts the file back to its old end;
        a kill during one leaves a partial last line, which read_history skips and a
        resume rewrites from its checkpoint."""
        data = "".join(jsonsafe.dumps(r) + "\n" for r in rows).encode()
        try:
            with open(self.history, "ab") as f:
                end = f.tell()
                try:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(end)
                    raise
        except OSError as err:
            raise_disk_error(err, self.history, len(data))

    # --- the final net ---

    def save_model(self, net: Any) -> Path:
        """model.keras, written through atomic_path."""
        with atomic_path(self.model) as tmp:
            net.save(tmp)
        return self.model


def config_text(cfg: Mapping[str, Any]) -> str:
    """config.json's text: strict JSON, keys sorted, indented (`train --print-config`
    prints the same)."""
    return json.dumps(cfg, indent=2, sort_keys=True, allow_nan=False) + "\n"
