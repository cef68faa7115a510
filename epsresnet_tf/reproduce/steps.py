"""The steps a reproduction piece runs, as data: each is one `epsresnet` command (train,
compress, ablate, describe) with the folder it writes and the test that it is finished.

A finished step is skipped when `make reproduce` runs again; an unfinished training run is
simply run again, and the run folder resumes it from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

from epsresnet_tf import recipes
from epsresnet_tf.runfolder import RunFolder

#: Where each dataset's files are on this machine, relative to the repository root (the
#: real subsets beside the checkout); `make reproduce REPRO_DATA=...` points elsewhere.
DEFAULT_DATA = {"cifar10": "../shared/data/cifar10-subset", "mnist": "../shared/data/mnist-subset"}


@dataclasses.dataclass(frozen=True)
class Train:
    """`epsresnet train RECIPE` into runs/repro/FOLDER/<run name>."""

    folder: str
    recipe: str
    dataset: str = "digits"  # selects --data-dir; digits ship with scikit-learn
    epsilon: float | None = None
    depth: int | None = None
    gpus: int | None = None  # --gpus (make reproduce-gpu); not part of the run's name

    @property
    def name(self) -> str:
        """The run folder's name, as `epsresnet train` names it (recipe + overrides)."""
        return recipes.resolve(self.recipe, depth=self.depth, epsilon=self.epsilon)[0]

    def run_dir(self, root: Path) -> Path:
        return Path(root) / self.folder / self.name

    def argv(self, root: Path, data: Mapping[str, str]) -> list[str]:
        args = ["train", self.recipe, "--out", str(Path(root) / self.folder)]
        if self.depth is not None:
            args += ["--depth", str(self.depth)]
        if self.epsilon is not None:
            args += ["--epsilon", f"{self.epsilon:g}"]
        if self.dataset in data:
            args += ["--data-dir", str(data[self.dataset])]
        if self.gpus is not None:
            args += ["--gpus", str(self.gpus)]
        return args + ["--quiet"]

    def done(self, root: Path) -> bool:
        """model.keras written and the history as long as the config's epochs."""
        folder = RunFolder(self.run_dir(root))
        if not (folder.model.is_file() and folder.config.is_file()):
            return False
        rows = folder.read_history()
        return bool(rows) and rows[-1]["epoch"] >= folder.read_config()["epochs"]

    @property
    def home(self) -> str:
        return self.folder

    def key(self) -> str:
        return f"train {self.folder}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Compress:
    """`epsresnet compress RUN` (certificate, reduced net, both rules' test errors)."""

    run: Train

    def argv(self, root: Path, data: Mapping[str, str]) -> list[str]:
        args = ["compress", str(self.run.run_dir(root))]
        if self.run.dataset in data:
            args += ["--data-dir", str(data[self.run.dataset])]
        return args + ["--force"]

    def done(self, root: Path) -> bool:
        return RunFolder(self.run.run_dir(root)).certificate.is_file()

    @property
    def home(self) -> str:
        return self.run.folder

    def key(self) -> str:
        return f"compress {self.run.folder}/{self.run.name}"


@dataclasses.dataclass(frozen=True)
class Ablate:
    """`epsresnet ablate RUN --order ORDER --seed S` into ablation/ORDER-sS.json."""

    run: Train
    order: str
    seed: int = 0
    max_removals: int | None = None

    @property
    def stem(self) -> str:
        return f"{self.order}-s{self.seed}"

    def path(self, root: Path) -> Path:
        return RunFolder(self.run.run_dir(root)).ablation / f"{self.stem}.json"

    def argv(self, root: Path, data: Mapping[str, str]) -> list[str]:
        args = ["ablate", str(self.run.run_dir(root)), "--order", self.order]
        args += ["--seed", str(self.seed), "--out", str(self.path(root))]
        if self.max_removals is not None:
            args += ["--max-removals", str(self.max_removals)]
        if self.run.dataset in data:
            args += ["--data-dir", str(data[self.run.dataset])]
        return args + ["--force"]

    def done(self, root: Path) -> bool:
        return self.path(root).is_file()

    @property
    def home(self) -> str:
        return self.run.folder

    def key(self) -> str:
        return f"ablate {self.run.folder}/{self.run.name} {self.stem}"


@dataclasses.dataclass(frozen=True)
class Describe:
    """`epsresnet describe ARCH --json` (parameters, conv layers, blocks) into
    runs/repro/FOLDER/<id>.json; run in-process (no training: one process builds them all)."""

    folder: str
    arch: str
    classes: int | None = None
    share: bool = False

    @property
    def ident(self) -> str:
        return (
            f"{self.arch}{'-c' + str(self.classes) if self.classes else ''}{'-shared' * self.share}"
        )

    def path(self, root: Path) -> Path:
        return Path(root) / self.folder / f"{self.ident}.json"

    def argv(self, root: Path, data: Mapping[str, str]) -> list[str]:
        args = ["describe", self.arch, "--json"]
        if self.classes is not None:
            args += ["--classes", str(self.classes)]
        return args + (["--share"] if self.share else [])

    def done(self, root: Path) -> bool:
        """Its JSON is there and has the counts the document reads (an output of an older
        `describe`, without the count that leaves BatchNorm out, is described again)."""
        try:
            return "trainable_params_without_bn" in json.loads(self.path(root).read_text())
        except (OSError, ValueError):
            return False

    @property
    def home(self) -> str:
        return self.folder

    def key(self) -> str:
        return f"describe {self.ident}"


Step = Train | Compress | Ablate | Describe
