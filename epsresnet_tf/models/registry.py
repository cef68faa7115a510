"""Name → builder resolution: `cifar-basic-110` resolves to the CIFAR builder with n=18.

Each family is data: a name pattern, a depth rule, its builder and its defaults
(input shape, classes, ShaResNet sharing default, weight decay).
"""

import dataclasses
import re
import sys
from typing import TYPE_CHECKING

from epsresnet_tf.blocks import NetConfig
from epsresnet_tf.errors import UserError
from epsresnet_tf.models import cifar, imagenet, keras_apps, mnist, wide

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class Family:
    pattern: str  # regex with the depth (and width) as groups
    form: str  # how the valid names read, for error messages
    valid: callable  # (*ints) -> bool
    build: callable  # (ints, config, input_shape, **layout) -> keras.Model
    input_shape: tuple
    classes: int
    share_first: bool  # ShaResNet: basic nets share every block, others all but the first
    weight_decay: float
    # False: compression removes units from the trained graph (transform.remove_units)
    # instead of rebuilding the family with fewer units (Keras applications' nets).
    rebuilds: bool = True


FAMILIES = {
    "cifar-basic": Family(
        r"cifar-basic-(\d+)",
        "cifar-basic-D with D = 6n+2 (20, 56, 110, 200, 302, 500, 752, …)",
        lambda d: d >= 8 and (d - 2) % 6 == 0,
        lambda a, cfg, shape, **layout: cifar.cifar_basic(a[0], cfg, shape, **layout),
        (32, 32, 3),
        10,
        True,
        2e-4,
    ),
    "cifar-bottleneck": Family(
        r"cifar-bottleneck-(\d+)",
        "cifar-bottleneck-D with D = 9n+2 (164, 1001, …)",
        lambda d: d >= 11 and (d - 2) % 9 == 0,
        lambda a, cfg, shape, **layout: cifar.cifar_bottleneck(a[0], cfg, shape, **layout),
        (32, 32, 3),
        10,
        False,
        2e-4,
    ),
    "imagenet": Family(
        r"imagenet-(\d+)",
        "imagenet-D with D in 18, 34, 50, 101, 152, 200",
        lambda d: d in imagenet.DEPTHS,
        lambda a, cfg, shape, **layout: imagenet.imagenet_resnet(a[0], cfg, shape, **layout),
        (224, 224, 3),
        1000,
        None,
        1e-4,
    ),
    "wrn": Family(
        r"wrn-(\d+)-(\d+)",
        "wrn-D-K with D = 6n+4 (16, 28, 40, …) and K >= 1",
        lambda d, k: d >= 10 and (d - 4) % 6 == 0 and k >= 1,
        lambda a, cfg, shape, **layout: wide.wide_resnet(a[0], a[1], cfg, shape, **layout),
        (32, 32, 3),
        10,
        False,
        2e-4,
    ),
    "mnist-plain": Family(
        r"mnist-plain-(\d+)",
        "mnist-plain-D with D >= 1",
        lambda d: d >= 1,
        lambda a, cfg, shape, **layout: mnist.mnist_fc(
            a[0], cfg, residual=False, input_shape=shape, **layout
        ),
        (28, 28, 1),
        10,
        False,
        0.0,
    ),
    "mnist-res": Family(
        r"mnist-res-(\d+)",
        "mnist-res-D with D even and >= 2 (units of two layers)",
        lambda d: d >= 2 and d % 2 == 0,
        lambda a, cfg, shape, **layout: mnist.mnist_fc(
            a[0], cfg, residual=True, input_shape=shape, **layout
        ),
        (28, 28, 1),
        10,
        False,
        0.0,
    ),
    "keras-resnet-v2": Family(
        r"keras:ResNet(\d+)V2",
        "keras:ResNet50V2, keras:ResNet101V2 or keras:ResNet152V2 (Keras applications)",
        lambda d: d in keras_apps.RESNET_V2,
        lambda a, cfg, shape, **layout: keras_apps.resnet_v2(a[0], cfg, shape, **layout),
        (224, 224, 3),
        1000,
        False,
        1e-4,
        rebuilds=False,
    ),
}


def rebuilds(name: str) -> bool:
    """Whether compression rebuilds `name`'s family with fewer units (this project's nets)
    or removes them from the trained graph (None: a net of no family, e.g. a user's own)."""
    return name is not None and resolve(name)[1].rebuilds


def authors_block_count(name):
    """The denominator of the authors' `discarded_ratio` where it is not the number of
    gated blocks: their CIFAR script divides by `all_cnt = 3n + 2` (n units per group),
    two more than the blocks. None elsewhere (their ImageNet script divides by the number
    of blocks) (docs/semantics.md §8)."""
    key, _, args = resolve(name)
    return 3 * ((args[0] - 2) // 6) + 2 if key == "cifar-basic" else None


def available():
    """The valid name forms, one string each."""
    return [family.form for family in FAMILIES.values()]


def _valid_list():
    return "; ".join(available())


def resolve(name):
    """(family key, Family, integer arguments) for an architecture name, or UserError."""
    for key, family in FAMILIES.items():
        match = re.fullmatch(family.pattern, name)
        if match:
            args = tuple(int(g) for g in match.groups())
            if not family.valid(*args):
                raise UserError(f"invalid depth in {name!r}: use {family.form}")
            return key, family, args
    raise UserError(f"unknown architecture {name!r}: valid are {_valid_list()}")


def build_model(
    name: str,
    *,
    input_shape: tuple | None = None,
    classes: int | None = None,
    share_first: bool | None = None,
    weight_decay: float | None = None,
    blocks_per_group: list[int] | None = None,
    first_removed: tuple = (),
    **options,
) -> "keras.Model":
    """Build the named network. `options` are NetConfig fields (gate, epsilon, share,
    side_head, init, data_format, order, shortcut, dropout, …); family defaults fill
    classes, input shape, weight decay and which blocks share a kernel.

    Compression rebuilds a net with fewer units: `blocks_per_group` overrides the
    per-group unit counts and `first_removed` names the groups whose original first unit
    is gone (its shortcut path stays as `group{g}_transition_…`)."""
    key, family, args = resolve(name)
    # Keras walks the functional graph recursively; ResNet-1001 has ~3,000 layers.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
    if share_first is None:
        share_first = family.share_first
        if share_first is None:  # ImageNet: basic nets share every block, bottleneck nets not
            share_first = not imagenet.DEPTHS[args[0]][1]
    try:
        config = NetConfig(
            classes=family.classes if classes is None else classes,
            weight_decay=family.weight_decay if weight_decay is None else weight_decay,
            share_first=share_first,
            **options,
        )
        layout = dict(first_removed=tuple(first_removed))
        if blocks_per_group is not None:
            layout["blocks_per_group"] = [int(n) for n in blocks_per_group]
        return family.build(args, config, tuple(input_shape or family.input_shape), **layout)
    except (ValueError, TypeError) as err:
        raise UserError(f"{name}: {err}") from err
