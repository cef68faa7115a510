"""The run folder: its layout, reading and writing it, and its checkpoints.

One module knows what `epsresnet train` writes and what `compress`, `ablate`, `evaluate`,
`report` and `sweep-eps` read back and add::

    runs/<name>/
      config.json          the resolved config (epsresnet_tf.config); a resume changes
                           only its config.FUTURE_ONLY keys (more epochs …)
      changes.jsonl        one row per resume that changed them: epoch, old and new values
      data.json            the dataset folder training read (not config: where the data
                           lies is not what the run computes); compress/evaluate reuse it
      history.jsonl        one JSON row per finished epoch
      tb/train/            TensorBoard events of training; tb/validation/ of evaluation
                           (a run each, as Keras writes them; earlier runs: tb/ alone)
      train.lock           while `train` runs: its flock, naming its pid and host
      ckpt/epoch-00005.npz checkpoints: every variable + the JSON state of the loop
      ckpt/epoch-00005.json  its manifest (size, sha256), written after it: valid once there
      ckpt/corrupt/        checkpoints that failed their manifest, moved aside
      model.keras          the final net (written when training ends)
      reduced/             `compress`: reduced.keras, saved_model/, certificate.json
                           (reduced.tflite with --tflite)
      ablation/            `ablate`: <order>.json
      report/              `report` of this run alone: tables.md and the figures

    RunFolder(root)            the paths above; open() (lock, sweep, --restart); config
                               check; save/verify/load/retention of checkpoints
    config_text(cfg) -> str    config.json's text (`train --print-config` prints it)
    read_run(run_dir) -> RunInfo   what compression, evaluation and reports need of a run
    read_init_weights(run, cfg, shapes)   the net weights `train --init-from` starts from
    read_history(run_dir) -> rows
    load_model(path) -> keras.Model
    find_run(model_path) -> the run folder a saved net belongs to, or None
    atomic_write_text/bytes(path, data), atomic_path(path): the one way a file is written
                               (temporary file beside it, fsync, umask's mode, rename);
                               a full disk, read-only folder or denied permission is one line

Every failure leaves the folder as it was before the write began, or with a leftover that
the next start recognises (an unfinished temporary file is swept, a checkpoint without its
manifest is skipped), so a run is never restarted or overwritten silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, NoReturn, Sequence

import numpy as np

from epsresnet_tf import jsonsafe
from epsresnet_tf.config import (
    FUTURE_ONLY,
    gate_batch,
    known_defaults,
    saved_config,
    upgrade_legacy,
)
from epsresnet_tf.data import datasets
from epsresnet_tf.data.readers import default_data_dir
from epsresnet_tf.errors import UserError
from epsresnet_tf.runconfig import RunConfig

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Names inside a run folder.
CONFIG = "config.json"
CHANGES = "changes.jsonl"
DATA = "data.json"
HISTORY = "history.jsonl"
TENSORBOARD = "tb"
TB_RUNS = ("train", "validation")  # TensorBoard runs inside tb/
CHECKPOINTS = "ckpt"
MODEL = "model.keras"
REDUCED = "reduced"
ABLATION = "ablation"
REPORT = "report"
#: Names inside reduced/ (what `compress` exports).
REDUCED_MODEL = "reduced.keras"
SAVED_MODEL = "saved_model"
REDUCED_TFLITE = "reduced.tflite"  # with `compress --tflite`
CERTIFICATE = "certificate.json"
#: The writer's lock file (RunLock) and the folder invalid checkpoints are moved to.
LOCK = "train.lock"
CORRUPT = "corrupt"


# --- writing: one atomic path, disk errors in one line -----------------------------------

#: Temporary files are named `.<name>.tmp-<pid>@<host>-<random><suffix>`: the pid and host
#: let the start-up sweep tell a dead writer's leftovers from a live writer's file.
_TMP = re.compile(r"^\.(?:.*\.)?tmp(?:-(\d+)@([^-/]+)-|[-.]|$)")
_STALE_FOREIGN = 24 * 3600  # another host's temp file is only swept once a day old
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "localhost"


def _umask() -> int:
    """The process umask, read without changing it: os.umask() sets it for every thread,
    and TensorBoard's writer thread may be creating a file at that moment."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_error(err: OSError, path: PathLike, needed: int | None = None) -> UserError | None:
    """The one-line UserError for a write into `path` that failed with a full disk, a
    read-only file system or a missing permission; None for other errors (a bug to see)."""
    path = Path(path)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        try:
            free = _human(shutil.disk_usage(where).free)
        except OSError:
            free = "unknown"
        need = f"{_human(needed)} needed, " if needed else ""
        what = "quota exceeded" if err.errno == errno.EDQUOT else "no space left"
        return UserError(
            f"{what} writing {path} ({need}{free} free): free some space or choose another "
            "--out, then run the same command (nothing written so far is lost)"
        )
    if err.errno == errno.EROFS:
        return UserError(f"cannot write {path}: read-only file system; choose another --out")
    if err.errno in (errno.EACCES, errno.EPERM):
        return UserError(
            f"cannot write {path}: permission denied; choose another --out or fix its permissions"
        )
    return None


def _raise_disk_error(err: OSError, path: PathLike, needed: int | None = None) -> NoReturn:
    """Raise disk_error's one line for `err` (chained), or `err` itself when it is not a
    disk error."""
    mapped = disk_error(err, path, needed)
    if mapped is None:
        raise err
    raise mapped from err


@contextlib.contextmanager
def atomic_path(path: PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a library to write (np.savez, model.save);
    on success it is fsynced, given the umask's mode (mkstemp makes 0600) and renamed over
    `path`, so a reader sees the old file or the new one, never part of one. On any failure
    (an exception, Ctrl-C) the temporary file is removed and `path` is untouched; a full
    disk, read-only folder or missing permission becomes one UserError line."""
    path = Path(path)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}@{_host()}-", suffix=path.suffix
        )
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _commit(tmp, path)
    except OSError as err:
        _discard(tmp)
        _raise_disk_error(err, path, needed)
    except BaseException:
        _discard(tmp)
        raise


def _commit(tmp: Path, path: Path) -> None:
    """fsync, chmod to the umask's mode and rename `tmp` over `path`; fsync the folder so
    the rename survives a power cut."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: PathLike) -> None:
    """Flush a folder's entries (renames, unlinks) to disk; a no-op where not supported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` through atomic_path (all or nothing, umask's mode)."""
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through atomic_path (all or nothing, umask's mode)."""
    atomic_write_bytes(path, text.encode())


def sweep_temporary_files(*folders: PathLike) -> list[Path]:
    """Remove the temporary files dead writers left in `folders` (a kill -9 skips every
    clean-up): ours of a pid no longer running on this host, another host's once a day
    old, and unnamed ones (`.tmp-*` of older versions). Returns what it removed."""
    removed = []
    now, host = time.time(), _host()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TMP.match(p.name)
            if not m or not p.is_file():
                continue
            pid, owner = m.groups()
            if pid and owner == host and _alive(int(pid)):
                continue
            if pid and owner != host and now - p.stat().st_mtime < _STALE_FOREIGN:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True


def _warn(message: str) -> None:
    """One line on stderr (a warning the user should see whatever logging is set up)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- one writer: the lock ----------------------------------------------------------------


class RunLock:
    """An exclusive `flock` on `<run>/train.lock`, held by `epsresnet train` for the run's
    life. The OS drops a flock when its last fd closes, so any exit (kill -9 included)
    releases it; the file's text (pid, host, start) only names the holder. A lock file
    left by a dead process is taken over with a message."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or UserError (one line) naming the live holder's pid and host."""
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                _raise_disk_error(err, self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_fd(fd)
                os.close(fd)
                raise self._busy(holder) from None
            # A holder that ended unlinks the file after we opened it: lock the file again.
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            stale = _read_fd(fd).strip()
            if stale:
                _warn(f"{self.root}: taking over the lock left by {stale} (no longer running)")
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(
                fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0
            )
            self.fd = fd

    def _busy(self, holder: str) -> UserError:
        holder = holder.strip() or "another process"
        m = re.match(r"pid (\d+) on (\S+)", holder)
        dead = m and m.group(2) == socket.gethostname() and not _alive(int(m.group(1)))
        why = " (not running: a process it started still holds the lock; stop it)" if dead else ""
        return UserError(
            f"{self.root} is in use by another `epsresnet train`: {holder}{why}; wait for it "
            "to end or stop it (two writers would interleave the run)"
        )

    def release(self) -> None:
        """Remove the lock file (so no one takes over a stale lock) and drop the lock."""
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class History(NamedTuple):
    rows: list[dict[str, Any]]
    cut_short: bool  # the last line was a half-written row (a kill mid-write), left out


def read_json(path: PathLike, fix: str) -> Any:
    """One JSON file of a run folder; UserError (the file, what is wrong, `fix`) if it is
    not JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); {fix}") from err


def last_val_error(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The last validation (test split) error of a history; None when no epoch has one."""
    for row in reversed(rows):
        if row.get("val_error") is not None:
            return float(row["val_error"])
    return None


class RunFolder:
    """`runs/<name>/`: paths, the writer's lock, config check, checkpoints."""

    KEEP = 2  # valid checkpoints kept (the newest and one before, in case the newest is bad)

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
            _warn(f"removed {p}, left by an interrupted write")
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
            _raise_disk_error(err, self.root)
        if not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run folder; choose another --out")

    def _has_content(self) -> bool:
        return any(p.name != LOCK and not _TMP.match(p.name) for p in self.root.iterdir())

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
            _raise_disk_error(err, self.ckpt)
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
            _raise_disk_error(err, self.history, len(data))

    # --- checkpoints ---
    #
    # ckpt/epoch-00005.npz holds the variables and the loop's state; ckpt/epoch-00005.json,
    # written after it, its size and sha256. A checkpoint is valid only once its manifest is
    # there and matches: a kill, a full disk or a later corruption (zero-fill, truncation,
    # a flipped bit) all leave a checkpoint that is skipped, never one that is trusted.

    def checkpoints(self) -> list[Path]:
        """The checkpoint files in ckpt/ (valid or not), oldest first."""
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

    @staticmethod
    def manifest_of(path: PathLike) -> Path:
        return Path(path).with_suffix(".json")

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
        """The .npz (variables + JSON state), then its manifest, each written atomically;
        then the retention: the KEEP newest valid checkpoints stay, and those the config
        keeps forever; invalid ones newer than none of them wait to be overwritten."""
        try:
            self.ckpt.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _raise_disk_error(err, self.ckpt)
        path = self.checkpoint_path(epoch)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                state=np.frombuffer(json.dumps(state).encode(), np.uint8),
                **{f"v{i:05d}": a for i, a in enumerate(arrays)},
            )
        size, digest = _sha256(path)
        manifest = {"file": path.name, "epoch": int(epoch), "size": size, "sha256": digest}
        atomic_write_text(self.manifest_of(path), json.dumps(manifest) + "\n")
        self._remember(path)
        self._retain()
        return path

    def _retain(self) -> None:
        """Remove valid checkpoints beyond the KEEP newest (unless kept forever). Invalid
        ones never count toward KEEP; once a newer valid one exists, a damaged one moves to
        ckpt/corrupt/ and an unfinished one goes."""
        valid, invalid = [], []
        for p in self.checkpoints():
            (invalid if self.verify(p) else valid).append(p)
        for p in valid[: -self.KEEP]:
            e = self.epoch_of(p)
            if e is None or not self.kept_forever(e):
                self.manifest_of(p).unlink(missing_ok=True)  # unverified before it goes
                p.unlink(missing_ok=True)
        newest = self.epoch_of(valid[-1]) if valid else None
        for p in invalid:  # a newer valid one exists: the invalid one is of no more use
            e = self.epoch_of(p) or 0
            if newest is None or e >= newest or self.kept_forever(e):
                continue
            if self.manifest_of(p).exists():  # damaged after it was written: keep to look at
                self._move_corrupt(p)
            else:  # an unfinished write, or a checkpoint of a version without manifests
                p.unlink(missing_ok=True)
        for m in self.ckpt.glob("epoch-*.json"):  # manifests of checkpoints gone
            if not m.with_suffix(".npz").exists():
                m.unlink(missing_ok=True)
        fsync_dir(self.ckpt)

    def _move_corrupt(self, path: Path) -> None:
        self.corrupt.mkdir(exist_ok=True)
        for p in (path, self.manifest_of(path)):
            if p.exists():
                os.replace(p, self.corrupt / p.name)
        _warn(f"moved the invalid checkpoint {path.name} to {self.corrupt}")

    def _remember(self, path: Path) -> None:
        st = path.stat()
        self._verified.add((path.name, st.st_size, st.st_mtime_ns))

    def verify(self, path: PathLike) -> str | None:
        """Why the checkpoint `path` is not valid (one phrase), or None when its manifest
        is there and its size and sha256 match. A file checked once (same size and mtime)
        is not hashed again."""
        path = Path(path)
        try:
            st = path.stat()
            if (path.name, st.st_size, st.st_mtime_ns) in self._verified:
                return None
            manifest = json.loads(self.manifest_of(path).read_text())
        except FileNotFoundError:
            return "no manifest: its write did not finish"
        except (OSError, ValueError) as err:
            return f"unreadable manifest ({err})"
        if not isinstance(manifest, dict) or "sha256" not in manifest:
            return "unreadable manifest (no sha256)"
        if st.st_size != manifest.get("size"):
            return f"{st.st_size} bytes, its manifest says {manifest.get('size')}: truncated"
        if _sha256(path)[1] != manifest["sha256"]:
            return "sha256 differs from its manifest: the file changed after it was written"
        self._remember(path)
        return None

    def load(self, path: PathLike) -> tuple[list[np.ndarray], dict[str, Any]]:
        """(arrays, state) of one checkpoint file; ValueError when it fails its manifest.
        A checkpoint without a manifest (written before manifests existed) is read as it
        is: the zip's own CRC-32 still catches most damage."""
        path = Path(path)
        if self.manifest_of(path).exists():
            why = self.verify(path)
            if why:
                raise ValueError(f"{path.name}: {why}")
        with np.load(path) as z:
            state = json.loads(bytes(z["state"]).decode())
            names = sorted(k for k in z.files if k.startswith("v"))
            return [z[k] for k in names], state

    def load_latest(self) -> tuple[list[np.ndarray], dict[str, Any]] | None:
        """(arrays, state) of the newest valid checkpoint, saying on stderr which newer ones
        it skipped and why. None when there is none and nothing says the run got further
        than an unfinished first epoch; UserError (one line, naming --restart) when the
        run has a past but no valid checkpoint, so the run is never silently restarted."""
        legacy = not any(self.ckpt.glob("epoch-*.json")) if self.ckpt.exists() else False
        skipped = []
        for path in reversed(self.checkpoints()):
            if not legacy and not self.manifest_of(path).exists():
                why = "no manifest: its write did not finish"
            else:
                try:
                    return self._load_announced(path, skipped)
                except Exception as err:  # any failure to read means: not usable
                    why = str(err).removeprefix(f"{path.name}: ") or type(err).__name__
            _warn(f"skipping checkpoint {path}: {why}")
            skipped.append(path.name)
        self._refuse_without_checkpoint(skipped)
        return None

    def _load_announced(self, path: Path, skipped: list[str]) -> Any:
        loaded = self.load(path)
        if skipped:
            _warn(f"resuming from {path.name}, the newest valid checkpoint")
        return loaded

    def _refuse_without_checkpoint(self, skipped: list[str]) -> None:
        rows = len(self.read_history()) if self.history.is_file() else 0
        if skipped:
            why = f"no valid checkpoint in {self.ckpt} (skipped {', '.join(skipped)})"
        elif rows and not self.ckpt.is_dir():
            why = f"{self.ckpt} is missing but history.jsonl has {rows} epochs"
        elif rows > 1:  # one row: killed while writing the first checkpoint; start again
            why = f"no checkpoint in {self.ckpt} but history.jsonl has {rows} epochs"
        else:
            return
        raise UserError(
            f"{why}: not restarting over the run; put the checkpoints back, or run the same "
            "command with --restart to move this run aside and train from the start"
        )

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


def _sha256(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


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
