"""Recipes: one declarative JSON file per paper experiment in `experiments/`.

A recipe holds the keys of `epsresnet_tf.train.loop.DEFAULTS` plus `name`, `description`,
`source` and, for families with a depth, `depth` with `arch` as a template
(`"cifar-basic-{depth}"`). `resolve` applies command-line overrides and validates.
"""
import json
import os
from pathlib import Path

from epsresnet_tf.errors import UserError

#: experiments/ beside the package (editable install), or $EPSRESNET_EXPERIMENTS.
EXPERIMENTS = Path(os.environ.get("EPSRESNET_EXPERIMENTS",
                                  Path(__file__).resolve().parents[1] / "experiments"))


def available():
    """Recipe names, sorted."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.json"))


def load(name_or_path):
    """The raw recipe dict, by name (experiments/NAME.json) or by path to a JSON file."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = EXPERIMENTS / f"{name_or_path}.json"
    if not path.is_file():
        close = [n for n in available() if str(name_or_path).split("-")[0] in n][:5]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise UserError(f"unknown recipe {name_or_path!r}{hint}; `epsresnet train --list` shows all")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err
    recipe.setdefault("name", path.stem)
    return recipe


def resolve(name_or_path, depth=None, **overrides):
    """(run name, resolved config): the recipe with `depth` and other overrides applied.
    The run name is the recipe's, plus the overrides that change what is trained."""
    from epsresnet_tf.train.loop import resolve_config
    recipe = load(name_or_path)
    template = recipe.get("arch", "")
    if depth is not None:
        if "{depth}" not in template:
            raise UserError(f"recipe {recipe['name']} has a fixed architecture ({template}); "
                            f"--depth does not apply")
        recipe["depth"] = depth
    if "{depth}" in template:
        recipe["arch"] = template.format(depth=recipe["depth"])
    name = recipe["name"]
    if depth is not None and depth != load(name_or_path).get("depth"):
        name += f"_depth{depth}"
    for key in ("epsilon", "epochs", "seed"):
        if overrides.get(key) is not None and overrides[key] != recipe.get(key):
            name += f"_{key}{overrides[key]}"
    cfg = resolve_config(recipe, **overrides)
    cfg["name"] = name
    return name, cfg
