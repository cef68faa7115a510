"""Recipes: one declarative JSON file per paper experiment in `experiments/`.

A recipe holds the keys of `epsresnet_tf.config.DEFAULTS` plus `name`, `description`,
`source` and, for families with a depth, `depth` with `arch` as a template
(`"cifar-basic-{depth}"`). A recipe may name another as its `base`
(`"base": "cifar10-eps-110"`): it has every key of the base (itself perhaps based on a
third) and overrides those it gives; its `name` is always its own. `resolve` applies
command-line overrides and validates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from epsresnet_tf.config import resolve_config
from epsresnet_tf.errors import UserError

#: experiments/ beside the package (editable install), or $EPSRESNET_EXPERIMENTS.
EXPERIMENTS = Path(
    os.environ.get("EPSRESNET_EXPERIMENTS", Path(__file__).resolve().parents[1] / "experiments")
)


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
        close = [n for n in available() if str(name_or_path).split("-")[0] in n][:5]
        hint = f" (e.g. {', '.join(close)})" if close else ""
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


def resolve(
    name_or_path: str | os.PathLike, depth: int | None = None, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """(run name, resolved config): the recipe with `depth` and other overrides applied.
    The run name is the recipe's, plus the overrides that change what is trained."""
    recipe = load(name_or_path)
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
    name = recipe["name"]
    if depth is not None and depth != load(name_or_path).get("depth"):
        name += f"_depth{depth}"
    for key in ("epsilon", "epochs", "seed"):
        if overrides.get(key) is not None and overrides[key] != recipe.get(key):
            name += f"_{key}{overrides[key]}"
    _check_schedules(recipe)
    cfg = resolve_config(recipe, **overrides)
    cfg["name"] = name
    return name, cfg
