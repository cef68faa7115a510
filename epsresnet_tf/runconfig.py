"""The run config's schema, typed: its sections, their keys and defaults, and `RunConfig`.

A run config is five sections. Four are frozen dataclasses whose fields are the config's
keys and defaults (this module owns them: `config.DEFAULTS` is their union); the fifth,
the gate section, belongs to the gate kind: its keys, defaults and validation are the
kind's `settings` and `check_settings` (epsresnet_tf.gates), so a kind with a
hyper-parameter of its own adds its keys without touching this file.

    DataSection       what is read and how: dataset, batch, steps, normalisation
    NetSection        the network and its loss: arch, side head, weight decay, towers
    GateSection       the gate kind (resolved once) and its settings
    ScheduleSection   epochs, optimizer, the lr schedules and the adaptive reset
    RunSection        seed, precision, devices, monitoring, checkpoints

    RunConfig.from_dict(cfg) -> RunConfig     a resolved (or saved-and-filled) flat config
    RunConfig.of(cfg_or_run) -> RunConfig     the same, or the RunConfig given
    run.as_dict() -> dict                     the flat config again: config.json's content

On disk a config stays one flat JSON object (config.json is the file it always was, and
older run folders resume): the sections are how the code reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from epsresnet_tf.gates import GateKind, all_settings, get_gate


def _list(*items):
    return dataclasses.field(default_factory=lambda: [list(i) for i in items])


@dataclasses.dataclass(frozen=True)
class DataSection:
    dataset: str = "cifar10"
    batch_size: int = 128
    batch_per: str = "replica"  # "replica" (CIFAR/SVHN: 128 per GPU) or "total" (ImageNet)
    steps_per_epoch: int | None = None  # None: the whole training split
    val_steps: int | None = None  # None: the whole evaluation split; 0: no validation
    data_workers: int = 0
    mean: str = "train+test"  # per-pixel mean as tensorpack's get_per_pixel_mean; or "train"
    # ImageNet input quirks of the authors' code (docs/semantics.md): "rgb" or "authors-bgr"
    # (BGR images normalised with the RGB mean/std); "clip" or "authors-wrap" (tensorpack
    # 0.2.0's Saturation overflowing uint8). Passed to data.pipeline.make_pipeline.
    imagenet_channel_order: str = "rgb"
    imagenet_saturation: str = "clip"


@dataclasses.dataclass(frozen=True)
class NetSection:
    arch: str = "cifar-basic-110"
    model_options: dict = dataclasses.field(default_factory=dict)
    side_head: bool = True
    side_weight: float = 0.1
    weight_decay: float = 2e-4
    wd_decay_every: int = 480000
    wd_decay_factor: float = 0.2
    gate_group: int | None = None  # images per "virtual tower" (None: the per-device batch)
    ghost_bn: bool = True  # with gate_group: BN normalises each group on its own


@dataclasses.dataclass(frozen=True)
class ScheduleSection:
    epochs: int = 1000
    optimizer: str = "momentum"  # one of config.OPTIMIZERS
    momentum: float = 0.9
    lr_schedule: list = _list([0, 0.1], [82, 0.01], [123, 0.001], [300, 0.0002])
    adaptive_schedule: list | None = _list([0, 0.1], [41, 0.01], [61, 0.001], [150, 0.0002])
    reset_threshold: float = 1.0
    reset_tolerance: float = 0.01  # above float32 rounding of the count's average
    reset_statistic: str = "discarded_count"  # the history key the reset reads
    reset_window: int = 1


@dataclasses.dataclass(frozen=True)
class RunSection:
    name: str | None = None
    seed: int = 0
    precision: str = "float32"  # one of config.PRECISIONS
    xla: bool = False
    gpus: int = 0
    deterministic: bool = False
    top5: bool = False
    histogram_every: int = 1
    # TensorBoard's steps/ scalars every N steps (0: off): 50 gives ~8 points in a CIFAR
    # epoch (391 steps) and 100 in an ImageNet one, enough to see the discarded count move
    # within an epoch, for ~1 MB of events over 300 CIFAR epochs (docs/DASHBOARD.md)
    summary_every_steps: int = 50
    keep_checkpoints_at: list = dataclasses.field(default_factory=list)  # compress --epoch
    keep_checkpoints_every: int = 0  # also keep every N-th epoch's checkpoint (0: none)
    init_from: str | None = None  # a run folder whose net weights start this run
    weights: str | None = None  # or a Keras file's (--init-from-keras: epsresnet_tf.pretrained)
    # a block discarded in a step costs no backward pass (train/skip.py; exact, so a
    # resume may change it)
    backward_skip: bool = True


@dataclasses.dataclass(frozen=True)
class GateSection:
    """The gate kind, resolved from its name once, and the gate settings the config holds
    (the kind's own, and those of the built-in kinds every config.json carries)."""

    kind: GateKind
    settings: Mapping[str, Any]

    KEY: ClassVar[str] = "gate"
    DEFAULT: ClassVar[str] = "eps"

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def own(self) -> dict[str, Any]:
        """The settings of this run's kind."""
        return {k: self.settings[k] for k in self.kind.settings if k in self.settings}


#: The sections whose fields are config keys, in config.json's order.
SECTIONS = {
    "data": DataSection,
    "net": NetSection,
    "schedule": ScheduleSection,
    "run": RunSection,
}


def section_defaults() -> dict[str, Any]:
    """{key: default} of the four dataclass sections (fresh lists and dicts)."""
    out = {}
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            has = f.default is not dataclasses.MISSING
            out[f.name] = f.default if has else f.default_factory()
    return out


def section_of(key: str) -> str | None:
    """The section a config key belongs to ("gate" for a gate kind's), None if no key."""
    if key == GateSection.KEY or key in all_settings():
        return "gate"
    for name, cls in SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return name
    return None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run's config, by section. Built once (`from_dict`) from a resolved config and
    passed on; `as_dict` gives back the flat config that config.json holds."""

    data: DataSection
    net: NetSection
    gate: GateSection
    schedule: ScheduleSection
    run: RunSection

    @classmethod
    def of(cls, cfg: RunConfig | Mapping[str, Any]) -> RunConfig:
        """`cfg` itself, or the RunConfig of a flat config."""
        return cfg if isinstance(cfg, RunConfig) else cls.from_dict(cfg)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """The sections of a flat config that holds every section key (a resolved config,
        or a saved one filled by `config.saved_config`)."""
        sections = {
            name: section(**{f.name: cfg[f.name] for f in dataclasses.fields(section)})
            for name, section in SECTIONS.items()
        }
        owned = all_settings()
        gate = GateSection(
            get_gate(cfg[GateSection.KEY]), {k: v for k, v in cfg.items() if k in owned}
        )
        return cls(gate=gate, **sections)

    def net_options(self, training: bool = False) -> dict[str, Any]:
        """build_model's keyword arguments besides the architecture, classes and input
        shape: the recipe's model options, the gate kind's own (ε, scope), the ε-gates'
        groups and the decay. `training`: the net as training builds it before the first
        epoch (ε at its schedule's start, the side head, ghost BN over the gate group);
        else the trained net that compress and evaluate rebuild (runfolder.read_run)."""
        options = dict(self.net.model_options or {})
        kind = self.gate.kind
        if kind.gated:
            options["gate_group"] = self.net.gate_group
            options.update(kind.net_options(self.gate.settings, training_start=training))
        options.update(gate=kind.name, weight_decay=self.net.weight_decay)
        if training:
            options["side_head"] = self.net.side_head
            if self.net.ghost_bn and self.net.gate_group is not None:
                options["bn_group"] = self.net.gate_group
        return options

    def as_dict(self) -> dict[str, Any]:
        """The flat config (a new dict): every section's keys and the gate settings."""
        out = {}
        for name in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        out[GateSection.KEY] = self.gate.name
        out.update(self.gate.settings)
        return out
