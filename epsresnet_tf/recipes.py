"""Recipes: one declarative JSON file per paper experiment in `experiments/`.

A recipe holds the keys of `epsresnet_tf.config.DEFAULTS` plus `name`, `description`,
`source` and, for families with a depth, `depth` with `arch` as a template
(`"cifar-basic-{depth}"`). A recipe may name another as its `base`
(`"base": "cifar10-eps-110"`): it has every key of the base (itself perhaps based on a
third) and overrides those it gives; its `name` is always its own. `resolve` applies
command-line overrides (config keys only) and validates; `run_name` names the run by what
it is: `cifar10-eps-110` at depth 20 is `cifar10-eps-20` (epochs are not named: more of them
extend the run).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from epsresnet_tf.config import (
    DEFAULTS,
    FUTURE_ONLY,
    check_keys,
    resolve_config,
    upgrade_legacy,
    validate_config,
    with_base_lr,
)
from epsresnet_tf.errors import UserError


def _experiments_folder() -> Path:
    """$EPSRESNET_EXPERIMENTS; else the recipes an installed wheel ships inside the package
    (setup.cfg maps the top-level experiments/ there); else experiments/ beside the package:
    a source checkout, run from it or installed editable (`make install`)."""
    if os.environ.get("EPSRESNET_EXPERIMENTS"):
        return Path(os.environ["EPSRESNET_EXPERIMENTS"])
    shipped = importlib.resources.files("epsresnet_tf") / "experiments"
    if isinstance(shipped, Path) and shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parents[1] / "experiments"


#: The folder of recipe files (`_experiments_folder`).
EXPERIMENTS = _experiments_folder()


def available() -> list[str]:
    """Recipe names, sorted."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.json"))


def _path(name_or_path: str | os.PathLike) -> Path | None:
    """The recipe file: a path to a JSON file, or experiments/NAME.json (None if neither)."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = EXPERIMENTS / f"{name_or_path}.json"
    return path if path.is_file() else None


def _read(path: Path) -> dict[str, Any]:
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a JSON object, not {type(recipe).__name__}")
    return recipe


def load(
    name_or_path: str | os.PathLike, _chain: tuple[tuple[str, Path], ...] = ()
) -> dict[str, Any]:
    """The recipe dict, by name (experiments/NAME.json) or by path to a JSON file, with the
    keys of its `base` chain filled in (the `base` key itself is gone)."""
    path = _path(name_or_path)
    if path is None:
        if _chain:
            raise UserError(
                f"recipe {_chain[-1][0]}: unknown base {str(name_or_path)!r} "
                f"(no {EXPERIMENTS / f'{name_or_path}.json'})"
            )
        names = available()
        # the nearest names by edit distance (`dmeo` → demo), as --set keys get theirs;
        # else the recipes of the same family (`cifar10-…`)
        close = difflib.get_close_matches(str(name_or_path), names, 3, 0.6)
        close = close or [n for n in names if str(name_or_path).split("-")[0] in n][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(
            f"unknown recipe {name_or_path!r}{hint}; `epsresnet train --list` shows all"
        )
    recipe = _read(path)
    name = recipe.get("name", path.stem)
    base = recipe.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise UserError(f"recipe {name}: base must be a recipe name, got {base!r}")
        chain = _chain + ((name, path.resolve()),)
        base_path = _path(base)
        if base_path is not None and base_path.resolve() in [p for _, p in chain]:
            names = [n for n, _ in chain] + [base]
            raise UserError(f"recipe {name}: base {base!r} makes a cycle ({' -> '.join(names)})")
        recipe = {**load(base, chain), **recipe}
    recipe["name"] = name
    return recipe


#: Recipe keys that hold a piecewise schedule, [[epoch, value], ...] (None: no schedule).
SCHEDULE_KEYS = ("lr_schedule", "adaptive_schedule")


def _is_pair(point: Any) -> bool:
    return (
        isinstance(point, (list, tuple))
        and len(point) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in point)
    )


def _check_schedules(recipe: dict[str, Any]) -> None:
    """UserError unless each schedule is a list of [epoch, value] pairs: the schedule code
    would unpack a string such as "fast" letter by letter and fail in a traceback."""
    for key in SCHEDULE_KEYS:
        value = recipe.get(key)
        if value is None or (key == "adaptive_schedule" and value in ([], False)):
            continue
        if not isinstance(value, list) or not value or not all(map(_is_pair, value)):
            raise UserError(
                f"recipe {recipe.get('name')}: {key} must be a list of [epoch, value] pairs, "
                f"e.g. [[0, 0.1], [82, 0.01]], not {value!r}"
            )


#: Overrides a run's name leaves out: how it runs or what it keeps, not what it computes
#: (give --name to keep such runs apart). The keys a resume may change (config.FUTURE_ONLY,
#: `epochs` among them) are not named either: `--epochs 3` after a 2-epoch run names the
#: same folder, and so extends it.
UNNAMED_KEYS = FUTURE_ONLY | {
    "name",
    "batch_size",
    "steps_per_epoch",
    "gpus",
    "precision",
    "xla",
    "deterministic",
    "init_from",  # named as `_from-<run>`
    "weights",  # named as `_from-<file>`
}
#: Overrides named first, in this order (the names runs had before --set); others follow
#: sorted.
NAME_ORDER = ("epsilon", "seed")


def _name_value(value: Any) -> str:
    """A value as a name part: numbers and strings as they are; a list or object (a
    schedule) as 6 hex digits of its hash, as brackets would need quoting in a shell."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    if isinstance(value, str):
        return value.replace(os.sep, "-")
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _with_depth(name: str, recipe_depth: Any, depth: int | None) -> str:
    """`name` for a run of `depth`: the part of the name that is the recipe's depth
    (cifar10-eps-110 → cifar10-eps-20), or `_depth20` added where no part is."""
    if depth is None or depth == recipe_depth:
        return name
    parts = name.split("-")
    if recipe_depth is not None and str(recipe_depth) in parts:
        parts[len(parts) - 1 - parts[::-1].index(str(recipe_depth))] = str(depth)
        return "-".join(parts)
    return f"{name}_depth{depth}"


def run_name(
    recipe: dict[str, Any],
    depth: int | None,
    overrides: dict[str, Any],
    lr: float | None = None,
    recipe_lr: float | None = None,
) -> str:
    """The run name: the recipe's, its depth replaced by the trained one, plus `_<key><value>`
    for each override that changes the recipe's value (UNNAMED_KEYS aside), `_lr<lr>` for
    another base learning rate and `_from-<run>` for --init-from (`_from-<file>` for
    --init-from-keras)."""
    name = _with_depth(recipe["name"], recipe.get("depth"), depth)
    changed = {
        k: v
        for k, v in overrides.items()
        if v is not None and k not in UNNAMED_KEYS and v != recipe.get(k, DEFAULTS[k])
    }
    for key in [*(k for k in NAME_ORDER if k in changed), *sorted(set(changed) - set(NAME_ORDER))]:
        name += f"_{key}{_name_value(changed[key])}"
    if lr is not None and lr != recipe_lr:
        name += f"_lr{lr}"
    for key in ("init_from", "weights"):
        if overrides.get(key):
            name += f"_from-{Path(overrides[key]).name}"
    return name


def resolve(
    name_or_path: str | os.PathLike,
    depth: int | None = None,
    lr: float | None = None,
    **overrides: Any,
) -> tuple[str, dict[str, Any]]:
    """(run name, resolved config): the recipe with `depth`, the base learning rate `lr`
    (config.with_base_lr: the schedules scaled to start at it) and other overrides applied;
    an override that is not a config key is a UserError naming the nearest ones. The run
    name is run_name's, or the `name` override."""
    overrides = upgrade_legacy(overrides)  # --mixed-precision is precision "fp16"
    check_keys(overrides)
    recipe = load(name_or_path)
    given = dict(recipe)  # the recipe as written: run_name compares the overrides with it
    template = recipe.get("arch", "")
    if depth is not None:
        if "{depth}" not in template:
            raise UserError(
                f"recipe {recipe['name']} has a fixed architecture ({template}); "
                f"--depth does not apply"
            )
        recipe["depth"] = depth
    if "{depth}" in template:
        recipe["arch"] = template.format(depth=recipe["depth"])
    _check_schedules(recipe)
    cfg = resolve_config(recipe, **overrides)
    name = run_name(given, depth, overrides, lr, cfg["lr_schedule"][0][1])
    if lr is not None:
        cfg = with_base_lr(cfg, lr)
        validate_config(cfg)
    name = cfg["name"] = overrides.get("name") or name
    return name, cfg
