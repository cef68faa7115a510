"""The one way a run folder's files are written: a temporary file beside the target,
fsync, the umask's mode, rename (atomic_path, atomic_write_text/bytes). A full disk,
read-only folder or denied permission becomes one UserError line (disk_error); the
temporary files dead writers leave are swept at the next start. Also the JSON reader whose
error names the file, and the one-line stderr warning the other modules share."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NoReturn

from epsresnet_tf.errors import UserError

PathLike = str | os.PathLike

#: Temporary files are named `.<name>.tmp-<pid>@<host>-<random><suffix>`: the pid and host
#: let the start-up sweep tell a dead writer's leftovers from a live writer's file.
_TMP = re.compile(r"^\.(?:.*\.)?tmp(?:-(\d+)@([^-/]+)-|[-.]|$)")
_STALE_FOREIGN = 24 * 3600  # another host's temp file is only swept once a day old
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporary files (of any version)."""
    return _TMP.match(name) is not None


def host() -> str:
    """This machine's name as temporary file names carry it (no '-': that ends the field)."""
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


def raise_disk_error(err: OSError, path: PathLike, needed: int | None = None) -> NoReturn:
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
            dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}@{host()}-", suffix=path.suffix
        )
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _commit(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise_disk_error(err, path, needed)
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
    now, here = time.time(), host()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TMP.match(p.name)
            if not m or not p.is_file():
                continue
            pid, owner = m.groups()
            if pid and owner == here and alive(int(pid)):
                continue
            if pid and owner != here and now - p.stat().st_mtime < _STALE_FOREIGN:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (the sweep's and the lock's test)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True


def warn(message: str) -> None:
    """One line on stderr (a warning the user should see whatever logging is set up)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_json(path: PathLike, fix: str) -> Any:
    """One JSON file of a run folder; UserError (the file, what is wrong, `fix`) if it is
    not JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); {fix}") from err
