"""The run's one writer: an exclusive flock on `<run>/train.lock` (RunLock), whose text
names the holder's pid, host and start, so a second `train` is refused in one line and a
lock left by a dead process is taken over."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from pathlib import Path

from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder.atomic import PathLike, alive, raise_disk_error, warn
from epsresnet_tf.runfolder.names import LOCK


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
                raise_disk_error(err, self.path)
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
                warn(f"{self.root}: taking over the lock left by {stale} (no longer running)")
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(
                fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0
            )
            self.fd = fd

    def _busy(self, holder: str) -> UserError:
        holder = holder.strip() or "another process"
        m = re.match(r"pid (\d+) on (\S+)", holder)
        dead = m and m.group(2) == socket.gethostname() and not alive(int(m.group(1)))
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
