"""A run folder's checkpoints: ckpt/epoch-00005.npz (every variable + the JSON state of the
loop) and ckpt/epoch-00005.json, its manifest (size, sha256), written after it; saving,
verifying, loading the newest valid one, and which stay (KEEP, keep_checkpoints_at/every,
ckpt/corrupt/)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder.atomic import (
    PathLike,
    atomic_path,
    atomic_write_text,
    fsync_dir,
    raise_disk_error,
    warn,
)


class Checkpoints:
    """RunFolder's checkpoint methods, kept apart from its layout: a mixin, so callers keep
    `folder.save_checkpoint(...)`. The folder provides the paths `ckpt`, `corrupt`,
    `config` and `history`, `read_history()`, and `_verified` (the files already hashed)."""

    KEEP = 2  # valid checkpoints kept (the newest and one before, in case the newest is bad)

    ckpt: Path
    corrupt: Path
    config: Path
    history: Path
    _verified: set[tuple[str, int, int]]

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
            raise_disk_error(err, self.ckpt)
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
        warn(f"moved the invalid checkpoint {path.name} to {self.corrupt}")

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
            warn(f"skipping checkpoint {path}: {why}")
            skipped.append(path.name)
        self._refuse_without_checkpoint(skipped)
        return None

    def _load_announced(self, path: Path, skipped: list[str]) -> Any:
        loaded = self.load(path)
        if skipped:
            warn(f"resuming from {path.name}, the newest valid checkpoint")
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


def _sha256(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()
