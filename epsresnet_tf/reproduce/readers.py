"""What the reproduction reads from run folders: histories, certificates, the steps'
JSON outputs (ablations, describes) and the runner's step log. Nothing here trains or writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from epsresnet_tf.naming import parse_block_id
from epsresnet_tf.runfolder import RunFolder, read_json

#: The runner's log of finished commands in each step folder (one JSON object a line).
STEP_LOG = "steps.jsonl"


def history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's epoch rows ([] when it has none yet)."""
    return RunFolder(run_dir).read_history()


def config(run_dir: Path) -> dict[str, Any] | None:
    folder = RunFolder(run_dir)
    return folder.read_config() if folder.config.is_file() else None


def certificate(run_dir: Path) -> dict[str, Any] | None:
    return RunFolder(run_dir).read_certificate()


def step_output(path: Path) -> dict[str, Any] | None:
    """The JSON a step wrote (an ablation, a describe), None before the step has run."""
    return read_json(path, "run its `make reproduce` step again") if path.is_file() else None


def group_of(block: str) -> int:
    return parse_block_id(block)[0]


def step_log(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / STEP_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wall_seconds(root: Path, step: Any) -> float | None:
    """Wall time of a step's finished attempts, summed (a resumed run took several);
    None when the step log has no finished attempt."""
    rows = [r for r in step_log(Path(root) / step.home) if r["step"] == step.key()]
    done = [r["wall_s"] for r in rows if r.get("wall_s") is not None]
    return sum(done) if done else None


def standard_error(error: float, images: int) -> float:
    """The binomial standard error of an error rate measured on `images` images."""
    return math.sqrt(max(error * (1 - error), 1e-12) / max(images, 1))
