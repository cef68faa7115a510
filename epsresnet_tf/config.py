"""The run config: its keys and defaults, validation, and the batch facts derived from it.

A config is a flat dict of the keys of `DEFAULTS`. Recipes (`epsresnet_tf.recipes`)
override the defaults, the command line overrides the recipe (`resolve_config`); training
writes the result to the run folder's config.json, and compression, evaluation and reports
read it back from there (`epsresnet_tf.runfolder.read_run`). Everything else that depends
on the config alone — how big a global batch is, how many images one device and one gate
see per step — is answered here, so that no other module recomputes it.

    resolve_config(recipe, **overrides) -> cfg       defaults <- recipe <- overrides, validated
    validate_config(cfg)                              UserError (one line) on a mistake
    check_keys(keys, what)                            UserError naming an unknown key and the
                                                      nearest valid ones
    parse_setting("KEY=VALUE") -> (key, value)        one `--set`: JSON, else a string
    with_base_lr(cfg, lr) -> cfg                      the lr schedules scaled to start at lr
    FUTURE_ONLY                                       keys a resumed run may change
    upgrade_legacy(cfg) -> cfg                        older keys in today's form (mixed_precision)
    dtype_policy(cfg) -> str                          the Keras dtype policy of the precision
    global_batch_size(cfg, replicas) -> int           images per step over all replicas
    per_device_batch(cfg, replicas=None) -> int       images per step on one device
    gate_batch(cfg) -> int                            images one ε-gate sees per step
    towers(cfg, replicas=None) -> (count, images)     the run's towers (gate groups)
    authors_towers(cfg, total, given) -> cfg          the authors' N × total // N towers
                                                      where the recipe's do not fit N devices
    towers_notice(recipe, cfg, flag) -> str | None    the one line saying so
    devices_fitting(batch, group) -> [int]            device counts a batch's towers fit
    saved_config(cfg) -> cfg                          a config.json with its missing keys filled
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import math
from typing import Any, Iterable, Mapping

from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import all_settings, gate_choices, gate_kinds, get_gate
from epsresnet_tf.pretrained import file_format
from epsresnet_tf.runconfig import GateSection, section_defaults
from epsresnet_tf.train.schedules import PiecewiseSchedule

Config = dict[str, Any]

#: Defaults of a resolved config; recipes override them (experiments/*.json).
#: History keys the adaptive reset may read: the authors' one moving average of the
#: discarded count (default), the sum of the per-block averages, or either ratio.
RESET_STATISTICS = (
    "discarded_count",
    "blocks_discarded_sum",
    "discarded_ratio",
    "discarded_ratio_authors",
)

#: Every config key and its default, owned by its section (epsresnet_tf.runconfig) or, for
#: the gate section, by the built-in gate kinds' `settings` (a kind registered later adds
#: its own keys to the configs that choose it: `resolve_config`).
DEFAULTS: Config = {
    **section_defaults(),
    GateSection.KEY: GateSection.DEFAULT,
    **{key: default for key, (_, default) in all_settings().items()},
}

#: Keys a run may change when it resumes (config.json is then updated and the change
#: recorded in the run folder's changes.jsonl): each acts only on epochs not trained yet.
#: `epochs` (how many in all; never fewer than trained), `val_steps` (validation after the
#: further epochs), `histogram_every` (TensorBoard histograms), `keep_checkpoints_*` (which
#: further checkpoints outlive the two newest), `data_workers` (processes decoding the
#: batches: the batches do not depend on them, data/pipeline.py), `backward_skip` (the
#: same numbers, train/skip.py). Any other key changes what
#: the trained epochs computed (the net, data, ε, seed, batch, schedules …): a resume with
#: another value is refused. docs/CONFIG.md lists them.
FUTURE_ONLY = frozenset(
    {
        "epochs",
        "val_steps",
        "histogram_every",
        "summary_every_steps",
        "keep_checkpoints_at",
        "keep_checkpoints_every",
        "data_workers",
        "backward_skip",
    }
)

#: Keys whose value may be null, with the type of their other values (the other keys
#: take the type of their value in DEFAULTS).
NULLABLE = {
    "name": str,
    "gate_group": int,
    "steps_per_epoch": int,
    "val_steps": int,
    "adaptive_schedule": list,
    "init_from": str,
    "weights": str,
}

#: Names people try for a key (Keras's, timm's) and the key they mean: for error hints.
COMMON_NAMES = {
    "lr": "lr_schedule (--lr scales it)",
    "learning_rate": "lr_schedule (--lr scales it)",
    "wd": "weight_decay",
    "eps": "epsilon",
    "batch": "batch_size",
    "depth": "--depth (not a config key: the arch's number)",
}

#: Keys a recipe may hold besides those of DEFAULTS: they describe it, or say how it
#: resolves, and are not written to config.json. `script_total_batch`: the total batch of
#: the authors' script, which lays `script_total_batch // N` images on each of N GPU towers
#: (imagenetEpsilonResnet.py: TOTAL_BATCH_SIZE = 256, BATCH_SIZE = TOTAL_BATCH_SIZE //
#: NR_GPU); on a device count the recipe's own towers do not fit, resolve_config follows
#: that rule (`authors_towers`) instead of refusing the count.
RECIPE_KEYS = ("description", "source", "depth", "script_total_batch")

#: What a saved config.json that lacks a key means: hand-written configs, and run folders
#: written before the key existed. Not DEFAULTS: a config without "gate" is an ungated net,
#: one without "mean" was normalised with the training split's mean.
SAVED_FALLBACKS: Config = {
    "gate": "none",
    "gate_group": None,
    "model_options": {},
    "weight_decay": 2e-4,
    "batch_size": 128,
    "batch_per": "replica",
    "gpus": 0,
    "mean": "train",
    "seed": 0,
    "precision": "float32",
    "weights": None,  # added with --init-from-keras: older runs started from no Keras file
    "backward_skip": True,  # added with the backward skip, which changes no number
}

#: Compute precisions and their Keras dtype policies. Under the mixed policies the
#: variables, the ε-gates' T and monitors, the loss and the optimizer state stay float32
#: (layers.py, train/model.py); "fp16" is the GPU setting (loss scaling), "bf16" needs no
#: loss scaling and is fast on CPUs with AVX512-BF16 or AMX (BENCHMARKS.md). float32 is the
#: default for fidelity: the gate compares max |F| with ε, and a bfloat16 F carries about
#: 3 significant digits (docs/PROFILE.md, "bfloat16").
PRECISIONS = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

#: The optimizer names a config may give: "momentum"/"nesterov" are TF1's accumulator forms
#: (the authors' `tf.train.MomentumOptimizer`, the default of every recipe), "keras-sgd"/
#: "keras-nesterov" Keras's own SGD (they differ after every lr change: docs/semantics.md),
#: "nadam" the gates paper's MNIST nets.
OPTIMIZERS = ("momentum", "nesterov", "keras-sgd", "keras-nesterov", "nadam")


def resolve_config(recipe: Mapping[str, Any], **overrides: Any) -> Config:
    """Defaults ← recipe ← overrides (None values ignored), validated: UserError on mistakes
    (an override that is not a config key included: it is never silently ignored)."""
    recipe = upgrade_legacy(recipe)
    overrides = upgrade_legacy(overrides)
    unknown = set(recipe) - set(known_defaults()) - set(RECIPE_KEYS)
    if unknown:
        raise UserError(f"unknown recipe keys: {', '.join(sorted(unknown))}")
    check_keys(overrides)
    given = {k for k, v in overrides.items() if v is not None}
    gate = overrides.get("gate") if "gate" in given else recipe.get("gate", DEFAULTS["gate"])
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(_kind(gate).settings)}
    cfg.update({k: v for k, v in recipe.items() if k in known_defaults()})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    _check_gate_keys(cfg)
    cfg = authors_towers(cfg, recipe.get("script_total_batch"), given)
    validate_config(cfg)
    return cfg


def known_defaults() -> Config:
    """{key: default} of every config key: DEFAULTS and the settings of every registered gate
    kind (a kind registered after this module loads, a test's or a user's, included)."""
    return {**{k: v for k, (_, v) in all_settings().items()}, **DEFAULTS}


def _kind(name: Any):
    """The gate kind of a config's "gate" (UserError for an unknown one)."""
    try:
        return get_gate(name)
    except (ValueError, TypeError):
        raise UserError(f"gate must be one of {', '.join(gate_choices())}, got {name!r}") from None


def _check_gate_keys(cfg: Mapping[str, Any]) -> None:
    """A gate kind's own key (one DEFAULTS lacks) only in a config that chooses that kind."""
    for key, (kind, _) in all_settings().items():
        if key in cfg and key not in DEFAULTS and kind.name != cfg.get("gate"):
            raise UserError(
                f"{key} is a setting of gate {kind.name!r}, and this run's gate is "
                f"{cfg.get('gate')!r}: give --gate {kind.name} or leave {key} out"
            )


def check_keys(keys: Iterable[str], what: str = "") -> None:
    """UserError (one line) for the first of `keys` that is not a config key, naming the
    nearest valid keys; `what` (e.g. "--set lr=0.1: ") is put in front."""
    known = known_defaults()
    for key in keys:
        if key not in known:
            near = [COMMON_NAMES[key]] if key in COMMON_NAMES else []
            near += [k for k in difflib.get_close_matches(key, known, 3, 0.5) if k not in near]
            hint = (
                f"did you mean {' or '.join(near)}?"
                if near
                else "`epsresnet train RECIPE --print-config` shows the keys"
            )
            raise UserError(f"{what}unknown config key {key!r}; {hint}")


def _no_constant(name: str) -> None:
    raise ValueError(name)  # NaN, Infinity: not JSON, and never a valid setting


def parse_setting(text: str) -> tuple[str, Any]:
    """(key, value) of one `--set KEY=VALUE`: VALUE read as JSON (5e-4, true, [[0, 0.1]],
    null), else taken as a string; an integer given for a float key becomes a float, so the
    config is the one the named flag (--epsilon 2) would give. UserError for an unknown key."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE (e.g. --set weight_decay=5e-4), got {text!r}")
    check_keys([key], f"--set {text}: ")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        value = raw
    if isinstance(known_defaults()[key], float) and _finite_number(value):
        value = float(value)
    return key, value


def with_base_lr(cfg: Mapping[str, Any], lr: float) -> Config:
    """A copy of `cfg` whose learning rate starts at `lr`: lr_schedule, and the adaptive
    schedule that replaces it after a reset (docs/semantics.md §7), times lr / the first
    lr of lr_schedule. The steps keep their epochs and ratios: `lr` is the base rate the
    schedule decays from, as Keras's and timm's --lr."""
    if not _finite_number(lr) or lr <= 0:
        raise UserError(f"--lr must be a positive number, got {lr!r}")
    first = cfg["lr_schedule"][0][1]
    if not first:
        raise UserError("lr_schedule starts at 0, so --lr cannot scale it: --set lr_schedule")
    out = copy.deepcopy(dict(cfg))
    for key in ("lr_schedule", "adaptive_schedule"):
        if out.get(key):
            # 12 digits: 0.01 / 0.1 * 0.05 is 0.005, not 0.0049999999999999996
            out[key] = [[e, float(f"{v / first * lr:.12g}")] for e, v in out[key]]
    return out


def upgrade_legacy(cfg: Mapping[str, Any]) -> Config:
    """`cfg` (a copy) with the keys of older versions in today's form: the boolean
    `mixed_precision` (true: mixed_float16) is `precision` "fp16", false the default
    float32 — unless `precision` is given beside it, which a true one must agree with."""
    out = dict(cfg)
    if "mixed_precision" not in out:
        return out
    mixed = out.pop("mixed_precision")
    if mixed is None or mixed is False:
        return out
    if out.get("precision") is None:  # absent, or an unset flag
        out["precision"] = "fp16"
    if out["precision"] != "fp16":
        raise UserError(
            f"mixed_precision: true (fp16) contradicts precision {out['precision']!r}; "
            "give precision alone"
        )
    return out


def dtype_policy(cfg: Mapping[str, Any]) -> str:
    """The Keras dtype policy the config's precision trains and infers under (a config.json
    of an older version: its mixed_precision)."""
    return PRECISIONS[upgrade_legacy(cfg).get("precision", "float32")]


@contextlib.contextmanager
def keras_precision(policy: str):
    """Keras's global dtype policy set to `policy` inside the block and restored after: a
    layer takes the global policy when it is made, so training, compression and the
    benchmarks each build under their run's precision and leave the next caller its own."""
    import keras

    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """UserError (one line, naming the key) unless `cfg` is a config training can run."""
    from epsresnet_tf.models.registry import resolve

    _check_types(cfg)
    resolve(cfg["arch"])  # UserError for unknown architecture or depth
    _check_finite(cfg)
    _kind(cfg["gate"])
    _check_gate_keys(cfg)
    for name in gate_kinds():  # each kind checks its keys (the built-in ones: in every config)
        kind = get_gate(name)
        if kind.settings and all(k in cfg for k in kind.settings):
            kind.check_settings({k: cfg[k] for k in kind.settings})
    if cfg["reset_statistic"] not in RESET_STATISTICS:
        raise UserError(
            f"reset_statistic must be one of {', '.join(RESET_STATISTICS)}, "
            f"got {cfg['reset_statistic']!r}"
        )
    if not 0 <= cfg["reset_tolerance"] < cfg["reset_threshold"]:
        raise UserError(
            f"reset_tolerance must be >= 0 and below reset_threshold "
            f"({cfg['reset_threshold']}), got {cfg['reset_tolerance']}"
        )
    for key in ("epochs", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["steps_per_epoch"] is not None and cfg["steps_per_epoch"] < 1:
        raise UserError(f"steps per epoch must be positive, got {cfg['steps_per_epoch']}")
    if cfg["gpus"] < 0:
        raise UserError(f"--gpus must be >= 0, got {cfg['gpus']}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise UserError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg['optimizer']!r}"
        )
    if cfg.get("precision", "float32") not in PRECISIONS:
        raise UserError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {cfg['precision']!r}"
        )
    if cfg["batch_per"] not in ("replica", "total"):
        raise UserError(f"batch_per must be 'replica' or 'total', got {cfg['batch_per']!r}")
    group = cfg["gate_group"]
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
        raise UserError(f"gate_group must be a positive integer or null, got {group!r}")
    if not isinstance(cfg["ghost_bn"], bool):
        raise UserError(f"ghost_bn must be true or false, got {cfg['ghost_bn']!r}")
    # --gpus N is N replicas on one machine; with several machines there are more, and a
    # per-device batch that works there works here too (global_batch_size checks again).
    _check_gate_group(cfg, max(cfg["gpus"], 1))

    PiecewiseSchedule(cfg["lr_schedule"])
    if cfg["adaptive_schedule"]:
        PiecewiseSchedule(cfg["adaptive_schedule"])
    _check_retention(cfg)
    if cfg.get("weights"):
        file_format(cfg["weights"])
        if cfg.get("init_from"):
            raise UserError(
                "init_from and weights both given: a run starts from one source of weights; "
                "drop --init-from or --init-from-keras"
            )
    every = cfg.get("summary_every_steps", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise UserError(f"summary_every_steps must be an integer >= 0 (0: off), got {every!r}")


#: Numeric keys that must be finite numbers: NaN passes every `< 0` check and ±inf trains
#: into NaN weights, and neither can be written as JSON (config.json).
FINITE_KEYS = (
    "momentum",
    "weight_decay",
    "wd_decay_factor",
    "side_weight",
    "reset_threshold",
    "reset_tolerance",
)
FINITE_SCHEDULES = ("lr_schedule", "adaptive_schedule")


_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _type_ok(kind: type, value: Any) -> bool:
    if kind is bool or not isinstance(value, bool):  # True is an int to Python, not to JSON
        if kind is float:
            return isinstance(value, (int, float))
        return isinstance(value, (list, tuple) if kind is list else kind)
    return False


def _check_types(cfg: Mapping[str, Any]) -> None:
    """Each key holds its DEFAULTS value's type (NULLABLE ones may be null): a --set value
    or a recipe's "true" string fails here in one line, not in a traceback later."""
    known = known_defaults()
    for key, value in cfg.items():
        if key not in known or (value is None and key in NULLABLE):
            continue
        if key == "adaptive_schedule" and value is False:  # recipes: no adaptive reset
            continue
        kind = NULLABLE.get(key) or type(known[key])
        if not _type_ok(kind, value):
            null = " or null" if key in NULLABLE else ""
            raise UserError(f"{key} must be {_TYPE_NAMES[kind]}{null}, got {value!r}")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_finite(cfg: Mapping[str, Any]) -> None:
    for key in FINITE_KEYS:
        if key in cfg and not _finite_number(cfg[key]):
            raise UserError(f"{key} must be finite, got {cfg[key]!r}")
    for key in FINITE_SCHEDULES:
        for entry in cfg.get(key) or ():
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise UserError(f"{key} must be a list of [epoch, value] pairs, got {entry!r}")
            if not _finite_number(entry[1]):
                raise UserError(f"{key} must be finite: got {entry[1]!r} at epoch {entry[0]}")


def _check_retention(cfg: Mapping[str, Any]) -> None:
    at = cfg.get("keep_checkpoints_at", [])
    if not isinstance(at, (list, tuple)) or not all(
        isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in at
    ):
        raise UserError(f"keep_checkpoints_at must be a list of epochs >= 1, got {at!r}")
    every = cfg.get("keep_checkpoints_every", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise UserError(f"keep_checkpoints_every must be an integer >= 0 (0: none), got {every!r}")


# --- batch facts -------------------------------------------------------------------------


def global_batch_size(cfg: Mapping[str, Any], replicas: int) -> int:
    """docs/semantics.md §6: CIFAR/SVHN batch_size per replica (128 per GPU), ImageNet in total (256,
    split over the GPUs). UserError if the total does not split evenly."""
    _check_gate_group(cfg, replicas)
    total = cfg["batch_size"] * (replicas if cfg["batch_per"] == "replica" else 1)
    if total % replicas:
        raise UserError(f"batch {total} does not split over {replicas} replicas")
    return total


def per_device_batch(cfg: Mapping[str, Any], replicas: int | None = None) -> int:
    """Images one device (replica) takes per step: batch_size with a per-replica batch, the
    total split over the replicas otherwise (`replicas` default: the config's --gpus, at
    least 1). Missing keys read as a saved config.json's (SAVED_FALLBACKS)."""
    cfg = saved_config(cfg)
    batch = int(cfg["batch_size"])
    if cfg["batch_per"] == "total":
        batch //= replicas if replicas else max(int(cfg["gpus"] or 0), 1)
    return batch


def gate_batch(cfg: Mapping[str, Any], replicas: int | None = None) -> int:
    """Images one ε-gate computes T over per step: its gate group (a "virtual tower",
    docs/semantics.md §1) or else the per-device batch."""
    group = cfg.get("gate_group")
    return int(group) if group else per_device_batch(cfg, replicas)


def _check_gate_group(cfg: Mapping[str, Any], replicas: int) -> None:
    """A gate group (virtual tower) lies within one device: UserError unless the per-device
    batch is a multiple of gate_group, naming the device counts that work. (A group across
    devices would need a cross-replica max per block and step.)"""
    group, batch = cfg.get("gate_group"), cfg["batch_size"]
    if group is None:
        return
    if cfg["batch_per"] == "replica":
        if batch % group:
            raise UserError(
                f"gate group {group} needs a per-device batch that is a multiple "
                f"of {group}; batch {batch} per device is not"
            )
        return
    if batch % replicas == 0 and (batch // replicas) % group == 0:
        return
    per = f"{batch // replicas}" if batch % replicas == 0 else f"{batch / replicas:.1f}"
    works = devices_fitting(batch, group)
    hint = f"use --gpus {_either(works)}" if works else f"use a batch that is a multiple of {group}"
    raise UserError(
        f"gate group {group} needs a per-device batch that is a multiple of "
        f"{group} (batch {batch} over {replicas} devices is {per} per device); "
        f"with batch {batch} {hint}"
    )


def devices_fitting(batch: int, group: int) -> list[int]:
    """The device counts over which a total batch splits into whole towers of `group`."""
    return [d for d in range(1, batch // group + 1) if batch % (d * group) == 0]


def _either(counts: list[int]) -> str:
    return f"{', '.join(map(str, counts[:-1]))} or {counts[-1]}" if len(counts) > 1 else "1"


def _towers_fit(cfg: Mapping[str, Any], replicas: int) -> bool:
    group, batch = cfg.get("gate_group"), cfg["batch_size"]
    return group is None or (batch % replicas == 0 and (batch // replicas) % group == 0)


def authors_towers(cfg: Config, total: int | None, given: Iterable[str] = ()) -> Config:
    """`cfg`, or on a device count its gate groups (towers) do not fit, the authors'
    script's towers: --gpus N trains N towers of `total` // N images each, one ε-gate group
    and one BatchNorm group per tower (imagenetEpsilonResnet.py: BATCH_SIZE =
    TOTAL_BATCH_SIZE // NR_GPU, config.nr_tower = NR_GPU). `total` None (the recipe has no
    such rule), a per-replica batch, or a batch_size or gate_group the user gave: unchanged
    (validation then refuses a count that does not fit). More devices than `total` images
    is refused, as the script would fail on it."""
    devices = cfg.get("gpus") or 0
    if (
        not total
        or cfg.get("gate_group") is None
        or cfg.get("batch_per") != "total"
        or {"batch_size", "gate_group"} & set(given)
        or not isinstance(devices, int)
        or isinstance(devices, bool)
        or devices < 1
        or _towers_fit(cfg, devices)
    ):
        return cfg
    if devices > total:
        raise UserError(
            f"--gpus {devices} is more devices than the {total} images of a step: the "
            f"authors' script gives each tower {total} // {devices} = 0 images; use at most "
            f"{total} devices"
        )
    per = total // devices
    return {**cfg, "batch_size": per * devices, "gate_group": per}


def towers(cfg: Mapping[str, Any], replicas: int | None = None) -> tuple[int, int]:
    """(towers, images per tower) of one step: the gate groups over all devices, each with
    its own T (and, with ghost BN, its own BatchNorm statistics), docs/semantics.md §1."""
    cfg = saved_config(cfg)
    devices = replicas if replicas else max(int(cfg["gpus"] or 0), 1)
    per = per_device_batch(cfg, devices)
    group = gate_batch(cfg, devices)
    return devices * (per // group), group


def towers_notice(
    recipe: Mapping[str, Any], cfg: Mapping[str, Any], flag: str = "--gpus"
) -> str | None:
    """One line when `cfg`'s towers are not the recipe's own (authors_towers applied):
    what this run's towers are, and the device counts that give the paper's."""
    group, batch = recipe.get("gate_group"), recipe.get("batch_size")
    if not group or not batch or (cfg["gate_group"], cfg["batch_size"]) == (group, batch):
        return None
    count, images = towers(cfg)
    return (
        f"{flag} {cfg['gpus']}: {count} towers of {images} images, each with its own ε-gates "
        f"and BatchNorm statistics (the authors' script's rule: {cfg['batch_size']} = "
        f"{count} × {images}); the paper's run used {batch // group} × {group}: for the "
        f"paper's towers use --gpus {_either(devices_fitting(batch, group))}"
    )


# --- saved configs -----------------------------------------------------------------------


def saved_config(cfg: Mapping[str, Any]) -> Config:
    """A config read back from a run folder, its missing keys filled with SAVED_FALLBACKS
    (a copy; `cfg` is not changed) and its older keys upgraded (`upgrade_legacy`)."""
    out = copy.deepcopy(SAVED_FALLBACKS)
    for name in gate_kinds():  # the gate keys every config.json of today carries
        kind = get_gate(name)
        if all(k in DEFAULTS for k in kind.settings):
            out.update(copy.deepcopy(kind.saved_settings or kind.settings))
    out.update(upgrade_legacy(cfg))
    kind = get_gate(out["gate"]) if out["gate"] in gate_choices() else None
    for key, value in (kind.saved_settings or kind.settings).items() if kind else ():
        out.setdefault(key, copy.deepcopy(value))
    return out
