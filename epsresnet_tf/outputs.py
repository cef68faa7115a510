"""Outputs that commands add beside a run (`compress`'s reduced/, `report`'s report/), built so
that a failure or a kill never leaves a folder half old and half new, and nets read back
with one-line errors.

    with staged_outputs(out_dir, owned=("certificate.json", ...)) as stage:
        write everything into `stage`
    # on success: stage is out_dir (old entries named in `owned` gone, others carried over);
    # on an exception: out_dir untouched, stage removed

    load_net(path) -> keras.Model; UserError (one line) when the file is not a readable .keras

The swap: `out.new-<pid>/` is built beside `out/`; at the end `out` is renamed to
`out.old-<pid>`, `out.new-<pid>` to `out`, the old folder's entries the new one does not
replace are moved across and `out.old-<pid>` is removed. Each step is one rename, so a kill
anywhere leaves enough for the next call to finish or undo the swap (`recover`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import load_model

PathLike = str | os.PathLike


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (our own pid counts as dead: within one process
    calls are sequential, so a leftover with our pid is from a call that already failed)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    """(path, pid) of `out.<kind>-<pid>` beside `out` whose process is gone."""
    pattern = re.compile(re.escape(out.name) + rf"\.{kind}-(\d+)$")
    found = []
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.match(p.name)
            if m and not _pid_alive(int(m.group(1))):
                found.append((p, int(m.group(1))))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _carry_over(old: Path, out: Path, owned: Sequence[str]) -> None:
    """Move the entries of `old` that `out` has no entry for and `owned` does not name
    (files the command did not write, e.g. the user's notes) into `out`, then remove `old`."""
    for entry in old.iterdir():
        mine = any(fnmatch.fnmatch(entry.name, pat) for pat in owned)
        if not mine and not (out / entry.name).exists():
            os.rename(entry, out / entry.name)
    shutil.rmtree(old)


def recover(out: PathLike, owned: Sequence[str] = ()) -> None:
    """Finish or undo a swap a killed process left beside `out`: a complete new folder whose
    swap had begun (an `.old-` exists) is put in place; a new folder whose swap never began
    may be partial and is removed; an old folder goes back if `out` is missing."""
    out = Path(out)
    news = dict((pid, p) for p, pid in _leftovers(out, "new"))
    for old, pid in _leftovers(out, "old"):
        if not out.exists() and pid in news:  # killed between the two renames
            os.rename(news.pop(pid), out)
        if out.exists():
            _carry_over(old, out, owned)
        else:
            os.rename(old, out)
    for partial in news.values():
        _remove(partial)


def _swap_in(stage: Path, out: Path, owned: Sequence[str]) -> None:
    if not out.exists():
        os.rename(stage, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(stage, out)
    _carry_over(old, out, owned)


@contextlib.contextmanager
def staged_outputs(out: PathLike, owned: Sequence[str] = ("*",)) -> Iterator[Path]:
    """A fresh folder beside `out` to write into, swapped in for `out` when the block ends
    without an exception; on an exception (KeyboardInterrupt included) it is removed and `out`
    is as before. `owned`: glob patterns of the names this command writes; old entries
    matching them go, others are kept."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --out needs a folder")
    recover(out, owned)
    stage = out.with_name(f"{out.name}.new-{os.getpid()}")
    _remove(stage)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out, owned)


def load_net(path: PathLike) -> Any:
    """A saved .keras net; UserError (one line) when it is missing or not a readable .keras
    file (Keras reports a truncated or zeroed file as "File not found", which it is not)."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise _unreadable(path, "not a zip archive: truncated, zeroed or another format")
    try:
        return load_model(path)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        first = (str(err).splitlines() or [""])[0][:160]
        raise _unreadable(path, f"{type(err).__name__}: {first}") from err


def _unreadable(path: Path, why: str) -> UserError:
    # The fix depends on who wrote the file: the run's own nets can be written again.
    if path.name == "model.keras":
        fix = "run the same `epsresnet train` command again: it rewrites model.keras from the "
        fix += "run's last checkpoint"
    elif path.name == "reduced.keras":
        fix = "run `epsresnet compress RUN_DIR --force` again"
    else:
        fix = "copy the file again"
    return UserError(f"{path} is not a readable .keras file ({why}); {fix}")
