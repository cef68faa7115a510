"""Runs a reproduction's steps: each unfinished step once, in order, through the normal
`epsresnet` commands (a subprocess each, so one run's TensorFlow state cannot leak into the
next), and logs its wall time and the machine to the step folder's steps.jsonl.

Finished steps are skipped; an unfinished training run is started again and resumes from
its checkpoint (the run folder's own resume). One runner at a time per root (a lock file).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import io
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Mapping

from epsresnet_tf import cli, jsonsafe
from epsresnet_tf.errors import UserError
from epsresnet_tf.reproduce.readers import STEP_LOG
from epsresnet_tf.reproduce.steps import Ablate, Compress, Describe, Step
from epsresnet_tf.runfolder import atomic_write_text


def machine() -> dict:
    """The machine a step ran on, in the words the document prints."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("tensorflow", "keras"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **versions,
    }


def command_line(step: Step, root: Path, data: Mapping[str, str]) -> str:
    """The shell command a person types for `step` (what the document prints)."""
    return "epsresnet " + shlex.join(step.argv(root, data))


def _log_row(root: Path, step: Step, row: dict) -> None:
    path = Path(root) / step.home / STEP_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + jsonsafe.dumps(row) + "\n")


def _describe(step: Describe, root: Path, data: Mapping[str, str]) -> int:
    """`epsresnet describe ARCH --json` in this process; its JSON saved to step.path."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(step.argv(root, data))
    if code == 0:
        step.path(root).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(step.path(root), out.getvalue())
    return code


def _subprocess(step: Step, root: Path, data: Mapping[str, str]) -> int:
    """The step's `epsresnet` command in a child process, its output appended to a log."""
    logs = Path(root) / step.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / (step.key().replace("/", "_").replace(" ", "_") + ".log")
    argv = [sys.executable, "-m", "epsresnet_tf.cli", *step.argv(root, data)]
    with open(log, "a") as out:
        return subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT)


def _waiting_on(step: Step, root: Path) -> str | None:
    """The unfinished training run a compress/ablate step needs, or None."""
    if isinstance(step, (Compress, Ablate)) and not step.run.done(root):
        return step.run.key()
    return None


def run_step(step: Step, root: Path, data: Mapping[str, str]) -> int:
    """Run one step and log it; its exit status."""
    started, clock = datetime.datetime.now().isoformat(timespec="seconds"), time.monotonic()
    host = machine()
    run = _describe if isinstance(step, Describe) else _subprocess
    code = run(step, root, data)
    row = {
        "step": step.key(),
        "command": command_line(step, root, data),
        "started": started,
        "wall_s": round(time.monotonic() - clock, 1),
        "exit": code,
        "machine": host,
    }
    _log_row(root, step, row)
    return code


@contextlib.contextmanager
def runner_lock(root: Path):
    """One runner per root: a second `make reproduce` is refused in one line."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / "runner.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another `make reproduce` is running on {root} (runner.lock); wait for it "
                "or stop it, then run the same command to continue"
            ) from None
        yield


def run_steps(
    steps: Iterable[Step], root: Path, data: Mapping[str, str], say: Callable = print
) -> dict:
    """Every unfinished step once, in order; {"ran", "skipped", "failed", "waiting"} keys."""
    summary = {"ran": [], "skipped": [], "failed": [], "waiting": []}
    seen = set()
    with runner_lock(root):
        for step in steps:
            if step.key() in seen:
                continue
            seen.add(step.key())
            if step.done(root):
                summary["skipped"].append(step.key())
                continue
            needs = _waiting_on(step, root)
            if needs:
                summary["waiting"].append(step.key())
                say(f"reproduce: {step.key()} waits for {needs}")
                continue
            say(f"reproduce: {command_line(step, root, data)}")
            code = run_step(step, root, data)
            summary["ran" if code == 0 else "failed"].append(step.key())
            if code:
                say(f"reproduce: {step.key()} exited {code} (log in {root}/{step.home}/logs)")
    return summary
