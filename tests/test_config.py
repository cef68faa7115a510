"""The config (epsresnet_tf.config) and the recipes that fill it (epsresnet_tf.recipes):
validation in one line, batch facts, recipe inheritance ("base"), and every recipe resolving
to the config it resolved to before the recipes inherited (tests/fixtures)."""

import json
import re
from pathlib import Path

import pytest
from _sources import tiny

from epsresnet_tf import recipes
from epsresnet_tf.config import (
    DEFAULTS,
    gate_batch,
    global_batch_size,
    parse_setting,
    per_device_batch,
    resolve_config,
    saved_config,
    with_base_lr,
)
from epsresnet_tf.errors import UserError
from epsresnet_tf.models.registry import resolve

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ({"epsilon": -1.0}, "epsilon"),
        ({"arch": "cifar-basic-13"}, "depth"),
        ({"arch": "vgg-16"}, "unknown architecture"),
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"reset_statistic": "val_error"}, "reset_statistic"),
        ({"reset_tolerance": 1.0}, "reset_tolerance"),
    ],
)
def test_bad_config_is_one_line_error(override, message, tmp_path):
    with pytest.raises(UserError, match=message) as err:
        tiny(**override)
    assert "\n" not in str(err.value)


def test_unknown_recipe_keys_are_named():
    with pytest.raises(UserError, match="unknown recipe keys: epsilno$"):
        resolve_config({"arch": "cifar-basic-8", "epsilno": 2.0})


def test_overrides_win_and_none_overrides_are_ignored():
    cfg = resolve_config({"arch": "cifar-basic-8", "epochs": 5}, epochs=7, seed=None)
    assert cfg["epochs"] == 7 and cfg["seed"] == DEFAULTS["seed"]
    assert set(cfg) == set(DEFAULTS)


# --- overrides: --set, --lr, unknown keys ------------------------------------------------


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("weight_decay=5e-4", "weight_decay", 5e-4),
        ("epsilon=2", "epsilon", 2.0),  # a float key: the int becomes a float
        ("side_head=false", "side_head", False),
        ("lr_schedule=[[0, 0.2], [5, 0.02]]", "lr_schedule", [[0, 0.2], [5, 0.02]]),
        ("gate_group=null", "gate_group", None),
        ("mean=train", "mean", "train"),  # not JSON: the string
        ("epsilon=NaN", "epsilon", "NaN"),  # not JSON either: validation refuses it
    ],
)
def test_a_setting_is_json_else_a_string(text, key, value):
    assert parse_setting(text) == (key, value)
    assert type(parse_setting(text)[1]) is type(value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate=0.05", "unknown config key 'learning_rate'; did you mean lr_schedule"),
        ("weight_decy=1e-4", "unknown config key 'weight_decy'; did you mean weight_decay or"),
        ("zzz=1", "unknown config key 'zzz'; `epsresnet train RECIPE --print-config` shows"),
        ("weight_decay", "--set expects KEY=VALUE"),
        ("=3", "--set expects KEY=VALUE"),
    ],
)
def test_an_unknown_or_malformed_setting_is_one_line_naming_the_nearest_keys(text, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        parse_setting(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"side_head": "yes"}, "side_head must be true or false, got 'yes'"),
        ({"epsilon": "NaN"}, "epsilon must be a number, got 'NaN'"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"seed": True}, "seed must be an integer, got True"),
        ({"gate_group": "4"}, "gate_group must be an integer or null, got '4'"),
        ({"lr_schedule": "fast"}, "lr_schedule must be a list, got 'fast'"),
        ({"init_from": 3}, "init_from must be a string or null, got 3"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line(override, message):
    with pytest.raises(UserError) as err:
        tiny(**override)
    assert str(err.value) == message


def test_resolve_refuses_an_unknown_override_instead_of_ignoring_it():
    """recipes.resolve(..., learning_rate=0.05) used to train at the recipe's rate."""
    for call in (
        lambda: recipes.resolve("cifar10-eps-110", learning_rate=0.05),
        lambda: recipes.resolve("cifar10-eps-110", bogus=1),
        lambda: resolve_config({"arch": "cifar-basic-8"}, bogus=None),
    ):
        with pytest.raises(UserError, match="^unknown config key") as err:
            call()
        assert "\n" not in str(err.value)


def test_lr_scales_both_schedules_to_start_at_it():
    name, cfg = recipes.resolve("cifar10-eps-110", lr=0.05)
    assert cfg["lr_schedule"] == [[0, 0.05], [82, 0.005], [123, 0.0005], [300, 0.0001]]
    assert cfg["adaptive_schedule"] == [[0, 0.05], [41, 0.005], [61, 0.0005], [150, 0.0001]]
    assert name == "cifar10-eps-110_lr0.05"
    assert recipes.resolve("cifar10-eps-110", lr=0.1)[0] == "cifar10-eps-110"  # the recipe's
    # no adaptive schedule: only the fixed one; a --set schedule is scaled too
    base = recipes.resolve("cifar10-base-110", lr=0.2)[1]
    assert base["lr_schedule"][0] == [0, 0.2] and base["adaptive_schedule"] is None
    mine = recipes.resolve("demo", lr=1.0, lr_schedule=[[0, 0.5], [3, 0.05]])[1]
    assert mine["lr_schedule"] == [[0, 1.0], [3, 0.1]]
    with pytest.raises(UserError, match="--lr must be a positive number, got 0"):
        with_base_lr(tiny(), 0)


# --- run names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, kw, name",
    [
        ("cifar10-eps-110", {}, "cifar10-eps-110"),
        ("cifar10-eps-110", {"depth": 20, "epochs": 2}, "cifar10-eps-20"),
        ("cifar10-eps-110", {"depth": 110}, "cifar10-eps-110"),
        ("cifar10-eps-warmup-200", {"depth": 56}, "cifar10-eps-warmup-56"),
        ("imagenet-eps-101-e2.0", {"depth": 50}, "imagenet-eps-50-e2.0"),
        ("gates-cifar10-resnet-32-gated", {"depth": 56}, "gates-cifar10-resnet-56-gated"),
        ("demo", {"depth": 8, "epochs": 20}, "demo_depth8"),  # no depth in the name
        (
            "cifar10-eps-110",
            {"weight_decay": 5e-4, "seed": 1},
            "cifar10-eps-110_seed1_weight_decay0.0005",
        ),
        ("cifar10-eps-110", {"seed": 0, "epsilon": 2.5}, "cifar10-eps-110"),  # the recipe's
        ("cifar10-eps-110", {"batch_size": 64, "val_steps": 3}, "cifar10-eps-110"),
        ("cifar10-eps-110", {"side_head": False}, "cifar10-eps-110_side_headfalse"),
        ("cifar10-eps-110", {"name": "mine", "epochs": 2}, "mine"),
    ],
)
def test_runs_are_named_by_what_they_are(recipe, kw, name):
    got, cfg = recipes.resolve(recipe, **kw)
    assert got == cfg["name"] == name


def test_a_run_named_like_another_recipe_is_that_recipe():
    """cifar10-eps-110 at depth 200 is cifar10-eps-200: same name, same config, same run."""
    assert recipes.resolve("cifar10-eps-110", depth=200) == recipes.resolve("cifar10-eps-200")
    schedule = recipes.resolve("cifar10-eps-110", lr_schedule=[[0, 0.2]])[0]
    assert re.fullmatch(r"cifar10-eps-110_lr_schedule-[0-9a-f]{6}", schedule)
    source = recipes.resolve("demo", init_from="/somewhere/runs/demo")
    assert source[0] == "demo_from-demo" and source[1]["init_from"] == "/somewhere/runs/demo"


# --- batch facts -------------------------------------------------------------------------


def test_gate_group_must_lie_within_one_device():
    # The authors' towers: ResNet-152 on 6 GPUs x 42 (252 in all), ResNet-101 on 4 x 64.
    # A group spanning devices would need a cross-replica max: refused in one line.
    _, r152 = recipes.resolve("imagenet-eps-152-e1.8")
    _, r101 = recipes.resolve("imagenet-eps-101-e2.0")
    assert (r152["batch_size"], r152["gate_group"], r152["ghost_bn"]) == (252, 42, True)
    assert (r101["batch_size"], r101["gate_group"]) == (256, 64)
    for replicas in (1, 2, 3, 6):
        assert global_batch_size(r152, replicas) == 252
    for replicas in (1, 2, 4):
        assert global_batch_size(r101, replicas) == 256
    # A resolved config laid on other devices than it was resolved for: refused in one line
    # (`--gpus N` itself takes the authors' towers there: tests/test_towers.py).
    for replicas in (4, 8):
        with pytest.raises(UserError) as err:
            global_batch_size(r152, replicas)
        message = str(err.value)
        assert "\n" not in message and message.startswith(
            "gate group 42 needs a per-device batch that is a multiple of 42"
        )
        assert message.endswith("with batch 252 use --gpus 1, 2, 3 or 6")
    with pytest.raises(UserError, match=r"8 devices is 32 per device.*--gpus 1, 2 or 4$"):
        global_batch_size(r101, 8)
    assert recipes.resolve("imagenet-eps-152-e1.8", gpus=6)[1]["gpus"] == 6
    with pytest.raises(UserError, match="use a batch that is a multiple of 42$"):
        recipes.resolve("imagenet-eps-152-e1.8", batch_size=256)
    with pytest.raises(UserError, match="batch 12 per device is not"):
        tiny(gate_group=8, batch_size=12)
    with pytest.raises(UserError, match="gate_group"):
        tiny(gate_group=0)


def test_per_device_and_gate_batch():
    cifar = tiny(batch_size=8)
    assert per_device_batch(cifar) == gate_batch(cifar) == 8  # 8 per replica
    assert global_batch_size(cifar, 2) == 16
    _, r152 = recipes.resolve("imagenet-eps-152-e1.8")  # 252 in all, groups of 42
    assert per_device_batch(r152, 6) == 42 and per_device_batch(dict(r152, gpus=6)) == 42
    assert per_device_batch(r152) == 252  # --gpus 0: one device
    assert gate_batch(r152) == 42
    # a config.json without the batch keys: the defaults of the runs that wrote it
    assert per_device_batch({"arch": "cifar-basic-8"}) == 128
    assert gate_batch({"batch_size": 256, "batch_per": "total", "gpus": 4}) == 64


def test_saved_config_fills_missing_keys_without_changing_the_given():
    given = {"arch": "cifar-basic-8", "dataset": "cifar10"}
    full = saved_config(given)
    assert given == {"arch": "cifar-basic-8", "dataset": "cifar10"}
    assert (full["gate"], full["mean"], full["epsilon"]) == ("none", "train", 0.0)
    assert saved_config({"gate": "eps"})["gate"] == "eps"


# --- recipes -----------------------------------------------------------------------------


def test_every_recipe_resolves_to_a_valid_config():
    names = recipes.available()
    # the runs the issue lists, at least
    for must in (
        "cifar10-eps-110",
        "cifar10-eps-752",
        "cifar100-eps-500",
        "cifar10-base-200",
        "cifar10-base-side-110",
        "svhn-eps-302",
        "imagenet-eps-101-e2.0",
        "imagenet-eps-101-e2.1",
        "imagenet-eps-152-e1.8",
        "gates-cifar10-resnet-32-gated",
        "gates-cifar10-wrn-28-10-dropout-gated",
        "sharesnet-cifar10-164-shared",
        "sharesnet-cifar100-wrn-28-10-shared",
        "gates-mnist-res-50-gated",
        "demo",
    ):
        assert must in names, must
    for name in names:
        _, cfg = recipes.resolve(name)
        resolve(cfg["arch"])
        assert cfg["epsilon"] >= 0


def test_recipe_values_follow_the_spec():
    c10 = recipes.resolve("cifar10-eps-110")[1]
    assert c10["arch"] == "cifar-basic-110" and c10["epsilon"] == 2.5 and c10["side_head"]
    assert c10["lr_schedule"] == [[0, 0.1], [82, 0.01], [123, 0.001], [300, 0.0002]]
    assert c10["adaptive_schedule"] == [[0, 0.1], [41, 0.01], [61, 0.001], [150, 0.0002]]
    assert c10["wd_decay_every"] == 480000 and c10["weight_decay"] == 2e-4
    svhn = recipes.resolve("svhn-eps-302")[1]
    assert svhn["epsilon"] == 1.5 and svhn["arch"] == "cifar-basic-302"
    inet = recipes.resolve("imagenet-eps-152-e1.8")[1]
    assert (
        inet["optimizer"],
        inet["batch_size"],
        inet["batch_per"],
        inet["steps_per_epoch"],
        inet["top5"],
        inet["epsilon"],
    ) == ("nesterov", 252, "total", 5000, True, 1.8)
    assert inet["gate_group"] == 42  # the authors' 6 GPUs x 42 images (256 // 6 each)
    name, deeper = recipes.resolve("cifar10-eps-110", depth=200, epsilon=2.0)
    assert deeper["arch"] == "cifar-basic-200" and deeper["epsilon"] == 2.0
    assert name == "cifar10-eps-200_epsilon2.0"  # the depth in the name is the one trained


@pytest.mark.parametrize(
    "name", ["svhn-eps-110", "svhn-eps-200", "svhn-eps-302", "svhn-base-110", "svhn-eps-paper-110"]
)
def test_svhn_recipes_run_the_cifar_model_with_its_weight_decay_staircase(name):
    # The SVHN script reuses the CIFAR model and so its decay ×0.2 every 480,000 steps; it
    # trains ε-ResNets 200 epochs (the paper says 150: the svhn-eps-paper variant).
    cfg = recipes.resolve(name)[1]
    assert (cfg["wd_decay_every"], cfg["wd_decay_factor"]) == (480000, 0.2)
    if "-eps-" in name:
        assert cfg["epochs"] == (150 if "paper" in name else 200)
        assert cfg["adaptive_schedule"] == [[1, 0.1], [10, 0.01], [14, 0.001], [25, 0.0001]]


@pytest.mark.parametrize(
    "name,published", [("imagenet-eps-101-e2.1", 2.1), ("imagenet-eps-152-e1.8", 1.8)]
)
def test_imagenet_as_run_variants_gate_at_the_scripts_constant(name, published):
    # imagenetEpsilonResnet.py reads -e but gates with EPSILON = 2.0: the published 2.1
    # and 1.8 runs gated at 2.0. Ours gate at the named ε; the as-run variants at 2.0.
    named, as_run = recipes.resolve(name)[1], recipes.resolve(name + "-as-run")[1]
    assert named["epsilon"] == published and as_run["epsilon"] == 2.0
    assert {k: v for k, v in named.items() if k not in ("epsilon", "name")} == {
        k: v for k, v in as_run.items() if k not in ("epsilon", "name")
    }


def test_recipe_from_a_path(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"arch": "cifar-basic-8", "epochs": 2}))
    name, cfg = recipes.resolve(str(path))
    assert name == "mine" and cfg["epochs"] == 2 and cfg["arch"] == "cifar-basic-8"


# --- recipe inheritance ("base") ---------------------------------------------------------


@pytest.fixture
def experiments(tmp_path, monkeypatch):
    """An experiments/ folder of our own; write(name, **keys) adds a recipe."""
    monkeypatch.setattr(recipes, "EXPERIMENTS", tmp_path)

    def write(name, **keys):
        (tmp_path / f"{name}.json").write_text(json.dumps(keys))

    return write


def test_a_recipe_inherits_its_base_chain_and_overrides_it(experiments):
    experiments(
        "root", description="the root", arch="cifar-basic-{depth}", depth=8, epsilon=2.0, epochs=10
    )
    experiments("child", base="root", depth=14, epochs=20)
    experiments("grandchild", base="child", description="mine", epsilon=1.0)
    child = recipes.load("child")
    assert child == {
        "name": "child",
        "description": "the root",
        "arch": "cifar-basic-{depth}",
        "depth": 14,
        "epsilon": 2.0,
        "epochs": 20,
    }
    name, cfg = recipes.resolve("grandchild")
    assert name == cfg["name"] == "grandchild"
    assert (cfg["arch"], cfg["epsilon"], cfg["epochs"]) == ("cifar-basic-14", 1.0, 20)
    assert recipes.load("grandchild")["description"] == "mine"
    # --depth names the run after the depth it changes, the inherited one included
    assert recipes.resolve("grandchild", depth=14)[0] == "grandchild"
    assert recipes.resolve("grandchild", depth=20)[0] == "grandchild_depth20"


def test_a_recipe_file_may_inherit_from_experiments(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "cifar10-eps-110", "epochs": 3}))
    name, cfg = recipes.resolve(str(path))
    assert name == "mine" and cfg["epochs"] == 3
    assert {k: v for k, v in cfg.items() if k not in ("name", "epochs")} == {
        k: v
        for k, v in recipes.resolve("cifar10-eps-110")[1].items()
        if k not in ("name", "epochs")
    }


def test_a_cycle_of_bases_is_a_one_line_error_naming_it(experiments):
    experiments("a", base="b", arch="cifar-basic-8")
    experiments("b", base="c")
    experiments("c", base="a")
    with pytest.raises(UserError) as err:
        recipes.resolve("a")
    assert str(err.value) == "recipe c: base 'a' makes a cycle (a -> b -> c -> a)"
    experiments("self", base="self")
    with pytest.raises(UserError, match=r"^recipe self: base 'self' makes a cycle"):
        recipes.load("self")


def test_an_unknown_base_is_a_one_line_error_naming_it(experiments):
    experiments("orphan", base="no-such-recipe", arch="cifar-basic-8")
    experiments("bad", base=["a", "b"])
    with pytest.raises(UserError) as err:
        recipes.resolve("orphan")
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "recipe orphan: unknown base 'no-such-recipe'"
    )
    with pytest.raises(UserError, match="^recipe bad: base must be a recipe name"):
        recipes.load("bad")


def test_every_recipe_resolves_as_before_the_recipes_inherited():
    """tests/fixtures/resolved_recipes.json was written (snapshot_recipes.py) before the
    CIFAR/SVHN recipes were rewritten to inherit: every config and run name is unchanged."""
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        from snapshot_recipes import snapshot
    finally:
        sys.path.remove(str(FIXTURES))
    before = json.loads((FIXTURES / "resolved_recipes.json").read_text())
    now = json.loads(json.dumps(snapshot(), sort_keys=True))  # JSON's keys and types
    assert sorted(now) == sorted(before)
    for name in before:
        assert now[name] == before[name], name


def test_the_depth_families_inherit_from_one_recipe_each():
    inheriting = [
        n
        for n in recipes.available()
        if "base" in json.loads((recipes.EXPERIMENTS / f"{n}.json").read_text())
    ]
    assert len(inheriting) >= 32
    for name in inheriting:
        assert recipes.load(name)["name"] == name
