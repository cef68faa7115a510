"""Every ε-ResNet and baseline recipe against the authors' scripts (issue #22, point 6a).

Each expected value below is a literal written from the authors' files (tensorpack 0.2.0
scripts; file and line in the comment) or, where the scripts have no such value, from the
paper (its section). Nothing here is read from this package: the recipes are resolved with
`recipes.resolve` and compared with the table. Where a recipe departs from the script on
purpose, DEVIATIONS names the value it holds instead and the row of docs/semantics.md §12
that says why; a deviation that no longer departs, or that §12 does not list, fails.
"""

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest

from epsresnet_tf import recipes
from epsresnet_tf.data import datasets
from epsresnet_tf.runconfig import RunConfig
from epsresnet_tf.train.loop import epoch_steps

ROOT = Path(__file__).resolve().parents[1]
SEMANTICS = ROOT / "docs" / "semantics.md"

# --- the scripts' values -------------------------------------------------------------------

#: cifarEpsilonResnet.py (both CIFARs: --cifar10 / --cifar100, :235-236).
CIFAR_SCRIPT = {
    "gate": "eps",  # strict_identity on every block, cifarEpsilonResnet.py:93
    "gate_scope": "batch",  # tf.reduce_max over the whole tensor, EpsilonResnetBase.py:26-27
    "gate_group": None,  # one GPU: run_cifar10.sh:3 `--gpu 1`, so the gate sees the batch
    "epsilon": 2.5,  # EPSILON = 2.5, cifarEpsilonResnet.py:42; `-e 2.5`, run_cifar10.sh:3
    "epsilon_start_epoch": 150,  # ScheduledHyperParamSetter('epsilon', [(0, 0.0), [150, EPSILON]]), :199-200
    "side_head": True,  # side_output after res2.{n/2}, cifarEpsilonResnet.py:116-117
    "side_weight": 0.1,  # side_loss_w = [0.1], cifarEpsilonResnet.py:145
    "epochs": 1000,  # MAX_EPOCH = 1000, cifarEpsilonResnet.py:188
    "batch_size": 128,  # BATCH_SIZE = 128, cifarEpsilonResnet.py:41 (BatchData, :178) ...
    "batch_per": "replica",  # ... per tower: SyncMultiGPUTrainer feeds each tower a batch, :259
    "steps_per_epoch": None,  # TrainConfig without steps_per_epoch: dataflow.size(), :194-208
    "optimizer": "momentum",  # tf.train.MomentumOptimizer(lr, 0.90), no Nesterov, :153
    "momentum": 0.9,  # cifarEpsilonResnet.py:153
    "lr_schedule": [[0, 0.1], [82, 0.01], [123, 0.001], [300, 0.0002]],  # :202
    "adaptive_schedule": [[0, 0.1], [41, 0.01], [61, 0.001], [150, 0.0002]],  # :203
    "reset_statistic": "discarded_count",  # LearningRateSetter(..., 'discarded_cnt', ...), :201
    "reset_threshold": 1.0,  # threshold 1, cifarEpsilonResnet.py:204
    "reset_window": 1,  # last_k 1, cifarEpsilonResnet.py:204
    "reset_tolerance": 0.0,  # `hist_max < hist_first + self.threshold`, LearningRateSetter.py:74
    "weight_decay": 0.0002,  # exponential_decay(0.0002, ...) · l2_loss (½‖w‖²), :138-140
    "wd_decay_every": 480000,  # exponential_decay(..., 480000, 0.2, True), :138-139
    "wd_decay_factor": 0.2,  # cifarEpsilonResnet.py:139
    "mean": "train+test",  # ds.get_per_pixel_mean(), cifarEpsilonResnet.py:165 (train + test)
}

#: svhnEpsilonResnet.py: its own data, schedules and length; the CIFAR Model (:23, :85), so
#: the loss, weight decay (with its staircase), side head and optimizer are
#: cifarEpsilonResnet.py's.
SVHN_SCRIPT = {
    **CIFAR_SCRIPT,
    "epsilon": 1.5,  # EPSILON = 1.5, svhnEpsilonResnet.py:29; `-e 1.5`, run_svnh.sh:2
    "epsilon_start_epoch": 0,  # no ε setter among the callbacks, svhnEpsilonResnet.py:77-84
    "epochs": 200,  # MAX_EPOCH = 200, svhnEpsilonResnet.py:69
    "batch_size": 128,  # BATCH_SIZE = 128, svhnEpsilonResnet.py:28
    "lr_schedule": [[1, 0.1], [20, 0.01], [28, 0.001], [50, 0.0001]],  # svhnEpsilonResnet.py:81
    "adaptive_schedule": [[1, 0.1], [10, 0.01], [14, 0.001], [25, 0.0001]],  # :82
    "mean": "train+test",  # SVHNDigit.get_per_pixel_mean(): train, test and extra, :35
}

#: imagenetEpsilonResnet.py.
IMAGENET_SCRIPT = {
    "gate": "eps",  # strict_identity on every block, imagenetEpsilonResnet.py:93
    "gate_scope": "batch",  # EpsilonResnetBase.py:26-27, over one tower's batch
    "epsilon": 2.0,  # strict_identity(l, EPSILON) with EPSILON = 2.0 (:26, :93); -e unused
    "epsilon_start_epoch": 0,  # no ε setter among the callbacks, imagenetEpsilonResnet.py:249-260
    "side_head": True,  # side_output in group2, imagenetEpsilonResnet.py:127-129
    "side_weight": 0.1,  # side_loss_w = [0.1], imagenetEpsilonResnet.py:165
    "epochs": 110,  # max_epoch=110, imagenetEpsilonResnet.py:262
    "steps_per_epoch": 5000,  # steps_per_epoch=5000, imagenetEpsilonResnet.py:261
    "batch_per": "total",  # TOTAL_BATCH_SIZE = 256 split over the GPUs, :22, :318-319
    "optimizer": "nesterov",  # MomentumOptimizer(lr, 0.9, use_nesterov=True), :173
    "momentum": 0.9,  # imagenetEpsilonResnet.py:173
    # get_scalar_var('learning_rate', 0.1) (:172), then ScheduledHyperParamSetter (:257-258)
    "lr_schedule": [[0, 0.1], [30, 0.01], [60, 0.001], [85, 0.0001], [95, 1e-05]],
    "adaptive_schedule": None,  # no LearningRateSetter, imagenetEpsilonResnet.py:249-260
    "weight_decay": 0.0001,  # regularize_cost('.*/W', l2_regularizer(1e-4)), :156
    "wd_decay_every": 0,  # a constant 1e-4: no exponential_decay, imagenetEpsilonResnet.py:156
    "top5": True,  # ClassificationError('wrong-top5', 'val-error-top5'), :256
}

#: Towers of the authors' ImageNet runs: `--gpu` of run_imagenet.sh, and
#: BATCH_SIZE = TOTAL_BATCH_SIZE // NR_GPU images per tower (imagenetEpsilonResnet.py:22,
#: :318-319), each tower its own ε-gates and BatchNorm batch (config.nr_tower, :325).
IMAGENET_TOWERS = {
    101: (4, 256 // 4),  # run_imagenet.sh:3, :17 `--gpu 0,1,2,3`
    152: (6, 256 // 6),  # run_imagenet.sh:20 `--gpu 0,1,2,3,4,5`
}

#: Depths of the scripts' runs: CIFAR 6n + 2 with n of run_cifar10.sh / run_cifar100.sh
#: (lines 3, 11, 13, 15: n = 18, 33, 83, 125), SVHN n of run_svnh.sh (lines 2, 11, 13:
#: n = 18, 33, 50), ImageNet -d of run_imagenet.sh (lines 3, 17: 101; 20: 152).
CIFAR_DEPTHS = {6 * 18 + 2, 6 * 33 + 2, 6 * 83 + 2, 6 * 125 + 2}  # 110, 200, 500, 752
SVHN_DEPTHS = {6 * 18 + 2, 6 * 33 + 2, 6 * 50 + 2}  # 110, 200, 302

#: The baselines: no script of the authors' trains one; the paper (§4, "Training") gives
#: their length, and they are the pre-activation ResNet of the same scripts without gates.
BASELINE = {
    "gate": "none",  # paper §4: "we use the pre-activation residual network as the baseline"
    "adaptive_schedule": None,  # no gate, nothing to reset on
}
CIFAR_BASELINE_EPOCHS = 200  # paper §4: "baseline models are trained for up to 200 epochs"
SVHN_BASELINE_EPOCHS = 80  # paper §4: "the baseline and ε-Resnet used 80 and 150 epochs"
SVHN_PAPER_EPOCHS = 150  # paper §4 (the script trains 200: svhnEpsilonResnet.py:69)

_NO_ADAPTIVE = ("adaptive_schedule", "reset_tolerance", "reset_statistic")
_NO_GATE = ("gate_scope", "gate_group", "epsilon", "epsilon_start_epoch", "side_head")


def _without(table, keys):
    return {k: v for k, v in table.items() if k not in keys}


def _cifar(dataset):
    rows = {}
    for depth in sorted(CIFAR_DEPTHS):
        for kind in ("eps", "eps-warmup"):
            rows[f"{dataset}-{kind}-{depth}"] = CIFAR_SCRIPT
        base = {
            **_without(CIFAR_SCRIPT, _NO_ADAPTIVE + _NO_GATE),
            **BASELINE,
            "epochs": CIFAR_BASELINE_EPOCHS,
        }
        rows[f"{dataset}-base-{depth}"] = base
        rows[f"{dataset}-base-side-{depth}"] = base
    return rows


def _svhn():
    rows = {}
    for depth in sorted(SVHN_DEPTHS):
        rows[f"svhn-eps-{depth}"] = SVHN_SCRIPT
        rows[f"svhn-base-{depth}"] = {
            **_without(SVHN_SCRIPT, _NO_ADAPTIVE + _NO_GATE),
            **BASELINE,
            "epochs": SVHN_BASELINE_EPOCHS,
        }
    rows["svhn-eps-paper-110"] = {**SVHN_SCRIPT, "epochs": SVHN_PAPER_EPOCHS}
    return rows


#: recipe -> the values the authors' script (or the paper, where noted) gives it.
TABLE = {
    **_cifar("cifar10"),
    **_cifar("cifar100"),
    **_svhn(),
    "imagenet-eps-101-e2.0": IMAGENET_SCRIPT,  # run_imagenet.sh:3 `-d 101 -e 2.0`
    "imagenet-eps-101-e2.1": IMAGENET_SCRIPT,  # run_imagenet.sh:17 `-d 101 -e 2.1`
    "imagenet-eps-101-e2.1-as-run": IMAGENET_SCRIPT,
    "imagenet-eps-152-e1.8": IMAGENET_SCRIPT,  # run_imagenet.sh:20 `-d 152 -e 1.8`
    "imagenet-eps-152-e1.8-as-run": IMAGENET_SCRIPT,
}

#: Where a recipe holds another value than the script on purpose: (recipe predicate, key)
#: -> (the recipe's value, the first cell of its docs/semantics.md §12 row).
DEVIATIONS = {
    # the paper's ε-ResNet has no warm-up; the script's is cifar*-eps-warmup-*
    ("cifar-eps", "epsilon_start_epoch"): (0, "CIFAR ε warm-up"),
    # the paper's "reset whenever a block is lost" above float32 rounding
    ("cifar-eps", "reset_tolerance"): (0.01, "reset comparison"),
    ("cifar-eps-warmup", "reset_tolerance"): (0.01, "reset comparison"),
    ("svhn-eps", "reset_tolerance"): (0.01, "reset comparison"),
    # -e 2.1 / 1.8 as the run scripts ask; the -as-run recipes gate at 2.0 as the script did
    ("imagenet-e2.1", "epsilon"): (2.1, "ImageNet ε"),
    ("imagenet-e1.8", "epsilon"): (1.8, "ImageNet ε"),
}


def _family(name):
    if name.startswith("imagenet"):
        return "imagenet" + ("-as-run" if name.endswith("-as-run") else name[-5:])
    for family in ("cifar-eps-warmup", "cifar-eps", "cifar-base", "svhn-eps", "svhn-base"):
        dataset, kind = family.split("-", 1)
        if name.startswith(dataset) and f"-{kind}-" in name:
            return family
    return None


@functools.lru_cache(maxsize=None)
def _resolved(name):
    return recipes.resolve(name)[1]


def _expected(name, key, value):
    deviation = DEVIATIONS.get((_family(name), key))
    return deviation[0] if deviation else value


# --- the tests -----------------------------------------------------------------------------


def test_the_table_covers_every_eps_and_baseline_recipe():
    on_disk = {
        p.stem
        for prefix in ("cifar10-", "cifar100-", "svhn-", "imagenet-")
        for p in recipes.EXPERIMENTS.glob(f"{prefix}*.json")
    }
    assert on_disk == set(TABLE), (sorted(on_disk - set(TABLE)), sorted(set(TABLE) - on_disk))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_recipe_holds_the_scripts_values(name):
    cfg = _resolved(name)
    wrong = {
        key: (cfg[key], _expected(name, key, value))
        for key, value in TABLE[name].items()
        if cfg[key] != _expected(name, key, value)
    }
    assert not wrong, f"{name}: (recipe, script) {wrong}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_recipe_depth_is_one_the_authors_ran(name):
    arch = _resolved(name)["arch"]
    family, depth = arch.rsplit("-", 1)
    if name.startswith("imagenet"):
        assert family == "imagenet" and int(depth) in IMAGENET_TOWERS
        assert depth in name  # imagenet-eps-101-…, imagenet-eps-152-…
    else:
        assert family == "cifar-basic"  # the CIFAR Model for SVHN too, svhnEpsilonResnet.py:23
        assert int(depth) in (SVHN_DEPTHS if name.startswith("svhn") else CIFAR_DEPTHS)


@pytest.mark.parametrize("name", [n for n in sorted(TABLE) if n.startswith("imagenet")])
def test_imagenet_towers_are_the_scripts(name):
    cfg = _resolved(name)
    gpus, per_tower = IMAGENET_TOWERS[int(cfg["arch"].rsplit("-", 1)[1])]
    assert cfg["gate_group"] == per_tower  # one ε-gate (and BN) group per authors' tower
    assert cfg["batch_size"] == gpus * per_tower  # 4 × 64 = 256; 6 × 42 = 252
    assert cfg["batch_size"] // cfg["gate_group"] == gpus


@pytest.mark.parametrize(
    "dataset, images, steps",
    [
        # tensorpack 0.2.0's Cifar10/Cifar100('train').size() is 50000; BatchData(ds, 128,
        # remainder=False) (cifarEpsilonResnet.py:178) makes 50000 // 128 = 390 batches,
        # and TrainConfig's steps_per_epoch is dataflow.size() (train/config.py).
        ("cifar10", 50000, 390),
        ("cifar100", 50000, 390),
        # RandomMixData([SVHNDigit('train'), SVHNDigit('extra')]) (svhnEpsilonResnet.py:37-39):
        # 73257 + 531131 images, BatchData(ds, 128, remainder=False) (:59): 4721 batches.
        ("svhn", 73257 + 531131, 4721),
    ],
)
def test_steps_per_epoch_are_the_scripts(dataset, images, steps):
    assert datasets.get(dataset).splits["train"] == images
    cfg = _resolved(f"{dataset}-eps-110")
    source = SimpleNamespace(shard_size=images, num_batches=images // cfg["batch_size"])
    assert epoch_steps(RunConfig.from_dict(cfg).data, source, 1) == steps


def test_imagenet_steps_per_epoch_are_the_scripts():
    cfg = _resolved("imagenet-eps-101-e2.0")
    source = SimpleNamespace(shard_size=1281167, num_batches=1281167 // 256)
    assert (
        epoch_steps(RunConfig.from_dict(cfg).data, source, 1) == 5000
    )  # steps_per_epoch=5000, imagenetEpsilonResnet.py:261


def test_each_deviation_departs_from_the_script_and_is_in_section_12():
    text = SEMANTICS.read_text()
    section = text[text.index("## 12.") :]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    for (family, key), (value, row) in DEVIATIONS.items():
        names = [n for n in TABLE if _family(n) == family]
        assert names, family
        assert all(TABLE[n][key] != value for n in names), (family, key)
        assert row in rows, f"docs/semantics.md §12 has no row {row!r}"
