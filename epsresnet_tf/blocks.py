"""One residual unit builder shared by every family (docs/semantics.md §2–§5, He et al. 2016 §3–§4).

A unit is: residual branch (basic 3x3-3x3 or bottleneck 1x1-3x3-1x1, in one of He et al.'s
orders) → optional gate (epsilon or k) → merge with a shortcut (identity and its He et al.
variants, 1x1 projection, or the parameter-free pool+pad). Settings common to a whole
network live in one `NetConfig`; layers are made by a `LayerFactory` bound to it.
"""

import dataclasses

import keras

from epsresnet_tf import layers as L
from epsresnet_tf.gates import gate_choices, get_gate
from epsresnet_tf.naming import block_id, layer_prefix, shared_prefix, transition_prefix

#: He et al. 2016 Fig. 4: (a) original, (b) BN after addition, (c) ReLU before addition,
#: (d) ReLU-only pre-activation, (e) full pre-activation (the default).
ORDERS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")
#: He et al. 2016 Fig. 2 shortcut variants on identity-shaped units.
SHORTCUTS = (
    "identity",
    "constant_scaling",
    "exclusive_gating",
    "shortcut_only_gating",
    "conv1x1",
    "dropout",
)
#: The variants that merge the two branches themselves (Fig. 2(b–d)); a gate that is a
#: merge of its own (`GateKind.merges`, e.g. k: g(k) F + x) cannot combine with them.
MERGING_SHORTCUTS = ("constant_scaling", "exclusive_gating", "shortcut_only_gating")
INITS = ("he_fan_out", "gaussian")
SCOPES = ("batch", "sample")


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Network-wide settings (docs/semantics.md §1–§6). `weight_decay` is the c of c·½‖w‖²."""

    classes: int = 10
    gate: str = "none"
    epsilon: float = 0.0
    gate_scope: str = "batch"
    k_decay: float = 0.0
    share: bool = False
    share_first: bool = False
    side_head: bool = False
    weight_decay: float = 2e-4
    init: str = "he_fan_out"
    data_format: str = "channels_last"
    order: str = "full_preact"
    shortcut: str = "identity"
    shortcut_scale: float = 0.5  # constant scaling: λ on the shortcut ...
    residual_scale: float = 0.5  # ... and the scale of F (He et al. Table 1: 1 or 1 - λ)
    gate_bias: float = 0.0
    shortcut_dropout: float = 0.5
    dropout: float = 0.0
    bn_momentum: float = 0.9  # tensorpack's BatchNorm defaults
    bn_epsilon: float = 1e-5
    # "Virtual towers" (docs/semantics.md): images per ε-gate group (None: the whole
    # per-device batch) and per BatchNorm group in training (None: the whole batch).
    gate_group: int = None
    bn_group: int = None
    # A gate kind's own options ({name: value}), for a kind outside the package whose
    # `make_layer` reads them (GateKind.net_options); the built-in kinds' are fields above.
    gate_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for field, allowed in (
            ("gate", gate_choices()),
            ("order", ORDERS),
            ("shortcut", SHORTCUTS),
            ("init", INITS),
            ("gate_scope", SCOPES),
            ("data_format", ("channels_last", "channels_first")),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {value!r}")
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0; got {self.epsilon}")
        if self.classes < 1:
            raise ValueError(f"classes must be >= 1; got {self.classes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        for field in ("gate_group", "bn_group"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{field} must be None or a positive integer; got {value!r}")
        get_gate(self.gate).validate(self)

    @property
    def preact(self):
        return self.order in ("full_preact", "relu_preact")

    @property
    def shortcut_merges(self) -> bool:
        """Whether the shortcut merges the branches itself (`MERGING_SHORTCUTS`): the fact a
        gate kind that is a merge of its own (`GateKind.merges`) checks in `validate`."""
        return self.shortcut in MERGING_SHORTCUTS


def __getattr__(name):
    if name == "GATES":  # "none" and the registered kinds, kinds registered later included
        return gate_choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LayerFactory:
    """Makes conv / BN / dense layers with a network's initialiser, decay and data format."""

    def __init__(self, config):
        self.config = config
        self.channel_axis = 1 if config.data_format == "channels_first" else -1
        # Kernels carry c·½‖w‖² = L2(c/2); BN, biases, epsilon and k carry none (docs/semantics.md §6).
        self.regularizer = (
            keras.regularizers.L2(config.weight_decay / 2) if config.weight_decay else None
        )

    def kernel_initializer(self, fan_mode="fan_out"):
        if self.config.init == "gaussian":
            return keras.initializers.RandomNormal(stddev=0.01)
        # tf.variance_scaling_initializer(scale=2.0, mode='fan_out'), as in the authors' code.
        return keras.initializers.VarianceScaling(
            2.0, mode=fan_mode, distribution="truncated_normal"
        )

    def conv(self, filters, kernel, stride=1, name=None):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            data_format=self.config.data_format,
            kernel_initializer=self.kernel_initializer(),
            kernel_regularizer=self.regularizer,
            name=name,
        )

    def bn(self, name):
        return L.FusedBatchNormalization(
            axis=self.channel_axis,
            momentum=self.config.bn_momentum,
            epsilon=self.config.bn_epsilon,
            group_size=self.config.bn_group,
            name=name,
        )

    def bn_relu(self, x, name):
        x = self.bn(name + "bn")(x)
        return keras.layers.ReLU(name=name + "relu")(x)

    def dense(self, units, name, dtype=None):
        return keras.layers.Dense(
            units,
            kernel_initializer=self.kernel_initializer("fan_in"),
            kernel_regularizer=self.regularizer,
            name=name,
            dtype=dtype,
        )

    def channels(self, x):
        return x.shape[self.channel_axis]


def residual_unit(
    x,
    factory,
    *,
    group,
    block,
    filters,
    stride=1,
    bottleneck=False,
    expansion=4,
    shortcut_kind="identity",
    preact="residual",
    shared_conv=None,
):
    """One residual unit named `group{g}_block{b}_…`; returns its output tensor.

    shortcut_kind: "identity" (with the NetConfig's He et al. variant), "projection"
    (1x1 conv with the stride) or "pool_pad" (option A, parameter-free).
    preact (pre-activation orders only): "none" — the input is already activated (the
    network's first unit); "residual" — BN-ReLU on the residual branch only; "split" —
    BN-ReLU before splitting, the shortcut sees the activated input.
    shared_conv: a Conv2D shared by the stage (docs/semantics.md §4) used in place of this unit's
    shared 3x3 (basic: the second; bottleneck: the only one).
    """
    cfg = factory.config
    p = layer_prefix(group, block)
    if bottleneck and cfg.dropout:
        raise ValueError(
            "dropout between the two convs is an option of basic units "
            "(cifar-basic, wrn, imagenet-18/34), not of bottleneck units"
        )
    out_channels = filters * expansion if bottleneck else filters
    if bottleneck:
        specs = [(filters, 1, 1), (filters, 3, stride), (out_channels, 1, 1)]
    else:
        specs = [(filters, 3, stride), (filters, 3, 1)]
    shortcut_input, residual = _preactivate(x, factory, p, preact)
    residual = _branch_convs(
        residual,
        factory,
        p,
        specs,
        bottleneck=bottleneck,
        shared_conv=shared_conv,
        unit=block_id(group, block),
    )
    merged = _merge_with_shortcut(
        shortcut_input, residual, factory, p, shortcut_kind, out_channels, stride
    )
    if cfg.order == "original":
        merged = keras.layers.ReLU(name=p + "out_relu")(merged)
    elif cfg.order == "bn_after_add":
        merged = factory.bn_relu(merged, p + "out_")
    return merged


def _preactivate(x, factory, p, preact):
    """(shortcut input, residual input) after the unit's pre-activation, if its order has
    one: BN-ReLU (full) or ReLU (ReLU-only), shared with the shortcut when `preact` is
    "split", skipped when "none"."""
    cfg = factory.config
    if preact == "none" or cfg.order not in ("full_preact", "relu_preact"):
        return x, x
    if cfg.order == "full_preact":
        activated = factory.bn_relu(x, p + "preact_")
    else:
        activated = keras.layers.ReLU(name=p + "preact_relu")(x)
    return (activated if preact == "split" else x), activated


def _branch_convs(residual, factory, p, specs, *, bottleneck, shared_conv, unit):
    """The residual branch's convs with the order's BN/ReLU between and after them. The
    shared 3x3 (basic: the second conv; bottleneck: the 3x3, docs/semantics.md §4) takes
    `shared_conv` when given."""
    cfg = factory.config
    last = len(specs) - 1
    for i, (channels, kernel, conv_stride) in enumerate(specs):
        if i > 0 and cfg.order == "full_preact":
            residual = factory.bn_relu(residual, f"{p}{i}_")
        elif i > 0 and cfg.order == "relu_preact":
            residual = keras.layers.ReLU(name=f"{p}{i}_relu")(residual)
        if i == 1 and not bottleneck and cfg.dropout:
            residual = keras.layers.Dropout(cfg.dropout, name=p + "dropout")(residual)
        if shared_conv is not None and i == 1:
            if conv_stride != 1:
                raise ValueError(
                    f"{unit}: a shared 3x3 kernel cannot serve "
                    "a strided unit; share every block but the stage's first"
                )
            conv = shared_conv
        else:
            conv = factory.conv(channels, kernel, conv_stride, name=f"{p}conv{i + 1}")
        residual = conv(residual)
        post_bn = cfg.order in ("original", "relu_before_add", "relu_preact") or (
            cfg.order == "bn_after_add" and i < last
        )
        if post_bn:
            residual = factory.bn(f"{p}{i + 1}_bn")(residual)
            if i < last and cfg.order != "relu_preact":
                residual = keras.layers.ReLU(name=f"{p}{i + 1}_relu")(residual)
    if cfg.order == "relu_before_add":
        residual = keras.layers.ReLU(name=p + "out_relu")(residual)
    return residual


def _merge_with_shortcut(x, residual, factory, p, kind, out_channels, stride):
    """The unit's output before any after-addition activation: the residual branch (gated
    as NetConfig says) merged with the shortcut of `kind` (He et al. Fig. 2 variants on
    identity-shaped units)."""
    cfg = factory.config
    if kind == "projection":
        return merge_branch(
            residual, factory.conv(out_channels, 1, stride, name=p + "shortcut_conv")(x), cfg, p
        )
    if kind == "pool_pad":
        pool_pad = L.PoolPadShortcut(
            out_channels, stride, cfg.data_format, name=p + "shortcut_pool_pad"
        )
        return merge_branch(residual, pool_pad(x), cfg, p)
    if factory.channels(x) != out_channels or stride != 1:
        raise ValueError(f"{p}: an identity shortcut needs equal shapes; use a projection")
    variant = cfg.shortcut
    if variant == "constant_scaling":  # Fig. 2(b): (1 - λ) F + λ x, or F + λ x
        f = keras.layers.Rescaling(cfg.residual_scale, name=p + "residual_scale")(
            gated_residual(residual, cfg, p)
        )
        h = keras.layers.Rescaling(cfg.shortcut_scale, name=p + "shortcut_scale")(x)
        return keras.layers.Add(name=p + "add")([f, h])
    if variant in ("exclusive_gating", "shortcut_only_gating"):  # Fig. 2(c, d)
        mode = "exclusive" if variant == "exclusive_gating" else "shortcut_only"
        gate = L.SigmoidShortcutGate(
            mode,
            cfg.gate_bias,
            cfg.data_format,
            factory.kernel_initializer(),
            factory.regularizer,
            name=p + "shortcut_gate",
        )
        return gate([gated_residual(residual, cfg, p), x])
    if variant == "conv1x1":  # Fig. 2(e)
        x = factory.conv(out_channels, 1, 1, name=p + "shortcut_conv")(x)
    elif variant == "dropout":  # Fig. 2(f)
        x = keras.layers.Dropout(cfg.shortcut_dropout, name=p + "shortcut_dropout")(x)
    return merge_branch(residual, x, cfg, p)


def gated_residual(residual, cfg, p):
    """S(F) under a gate that maps F alone (the ε gate, docs/semantics.md §1); F otherwise."""
    kind = get_gate(cfg.gate)
    if kind.gated and not kind.merges:
        return kind.make_layer(cfg, p + kind.suffix)(residual)
    return residual


def merge_branch(residual, shortcut, cfg, p):
    """S(F) + x, a merging gate's own u (g(k) F + x, docs/semantics.md §3) or F + x."""
    kind = get_gate(cfg.gate)
    if kind.gated and kind.merges:
        return kind.make_layer(cfg, p + kind.suffix)([residual, shortcut])
    return keras.layers.Add(name=p + "add")([gated_residual(residual, cfg, p), shortcut])


def shared_kernel(factory, group, filters):
    """The one 3x3 kernel a stage's sharing blocks use (docs/semantics.md §4)."""
    return factory.conv(filters, 3, 1, name=shared_prefix(group) + "conv3x3")


def classifier(x, factory, name, activate=True):
    """BN-ReLU → global average pool → FC(classes) logits (float32 under mixed precision)."""
    cfg = factory.config
    if activate:
        x = factory.bn_relu(x, name + "_")
    x = keras.layers.GlobalAveragePooling2D(data_format=cfg.data_format, name=name + "_pool")(x)
    return factory.dense(
        cfg.classes, name=name + "_fc" if name != "head" else "logits", dtype="float32"
    )(x)


def side_head_index(blocks_per_group):
    """Global 0-based index of the unit after which the side head sits in the CIFAR/SVHN
    nets: the authors' `res2.{n//2}`, i.e. unit n + n//2 = ⌊N/2⌋ (docs/semantics.md,
    "Side head")."""
    return sum(blocks_per_group) // 2


def imagenet_side_head_index(blocks_per_group):
    """The ImageNet script's place: block `sum(defs)//2 - sum(defs[:2]) - 1` of group 2
    (Python 2 integer division), so the global unit ⌊N/2⌋ − 1: group2/block8 of
    ResNet-101, group2/block13 of ResNet-152 (docs/semantics.md §5). None where
    that block index is negative (ResNet-18: 8//2 - 4 - 1 = -1): the script attaches no
    side head there, and neither do we."""
    in_group = sum(blocks_per_group) // 2 - sum(blocks_per_group[:2]) - 1
    return sum(blocks_per_group[:2]) + in_group if in_group >= 0 else None


def transition_unit(x, factory, *, group, out_channels, stride, shortcut_kind, preact):
    """What stays of a group's first unit once its residual branch is removed (docs/semantics.md §9):
    the shortcut path between resolutions, named `group{g}_transition_…`."""
    p = transition_prefix(group)
    if shortcut_kind == "projection":
        if preact == "split" and factory.config.order == "full_preact":
            x = factory.bn_relu(x, p + "preact_")
        elif preact == "split" and factory.config.order == "relu_preact":
            x = keras.layers.ReLU(name=p + "preact_relu")(x)
        return factory.conv(out_channels, 1, stride, name=p + "shortcut_conv")(x)
    if shortcut_kind == "pool_pad":
        return L.PoolPadShortcut(
            out_channels, stride, factory.config.data_format, name=p + "shortcut_pool_pad"
        )(x)
    return x


def _unit_plan(x, factory, stride, out_channels, dim_shortcut, activated):
    """(shortcut kind, pre-activation) of a unit or transition fed `x`."""
    changes = stride != 1 or factory.channels(x) != out_channels
    kind = dim_shortcut if changes else "identity"
    if activated:  # the input already went through BN-ReLU
        return kind, "none"
    return kind, ("split" if kind == "projection" else "residual")


def _group_transition(x, factory, g, out_channels, stride, dim_shortcut, activated):
    """The transition that opens group `g` when compression removed its first unit."""
    kind, preact = _unit_plan(x, factory, stride, out_channels, dim_shortcut, activated)
    return transition_unit(
        x,
        factory,
        group=g,
        out_channels=out_channels,
        stride=stride,
        shortcut_kind=kind,
        preact=preact,
    )


def _stack_unit(x, factory, g, b, width, stride, out_channels, activated, shared, options):
    """Unit `b` of group `g`, planned by `_unit_plan`; `options` holds bottleneck and
    dim_shortcut."""
    kind, preact = _unit_plan(x, factory, stride, out_channels, options["dim_shortcut"], activated)
    return residual_unit(
        x,
        factory,
        group=g,
        block=b,
        filters=width,
        stride=stride,
        bottleneck=options["bottleneck"],
        shortcut_kind=kind,
        preact=preact,
        shared_conv=shared,
    )


def residual_stack(
    x,
    factory,
    blocks_per_group,
    widths,
    *,
    bottleneck,
    first_stride,
    dim_shortcut,
    first_unit_activated,
    share_first,
    first_removed=(),
    side_head_at=side_head_index,
):
    """All groups of units. Returns (output, side_tensor or None).

    dim_shortcut: shortcut where shapes change ("projection" or "pool_pad").
    first_unit_activated: the stem already ends in BN-ReLU, so the network's first unit
    skips its pre-activation.
    first_removed: groups whose original first unit was removed by compression; such a
    group starts with its transition (the old shortcut path) and its remaining units are
    numbered from 0, all of them former non-first units.
    side_head_at: blocks_per_group -> global index of the unit the side head follows.
    """
    cfg = factory.config
    side_at = side_head_at(blocks_per_group) if cfg.side_head else None
    side = None
    index = 0
    options = {"bottleneck": bottleneck, "dim_shortcut": dim_shortcut}
    for g, (count, width) in enumerate(zip(blocks_per_group, widths)):
        shared = shared_kernel(factory, g, width) if cfg.share and count else None
        group_stride = first_stride if g == 0 else 2
        out_channels = width * (4 if bottleneck else 1)
        if g in first_removed:
            activated = g == 0 and first_unit_activated
            x = _group_transition(
                x, factory, g, out_channels, group_stride, dim_shortcut, activated
            )
        for b in range(count):
            first = b == 0 and g not in first_removed  # the group's original first unit
            stride = group_stride if first else 1
            activated = g == 0 and first and first_unit_activated
            unit_shared = shared if (not first or share_first) else None
            x = _stack_unit(
                x, factory, g, b, width, stride, out_channels, activated, unit_shared, options
            )
            if index == side_at:
                side = classifier(x, factory, "side_head")
            index += 1
    return x, side


def finish_model(inputs, x, side, factory, name, activate=True):
    """Classifier head and the keras.Model; with a side head, outputs are a dict."""
    logits = classifier(x, factory, "head", activate=activate)
    outputs = {"logits": logits, "side_logits": side} if side is not None else logits
    return keras.Model(inputs, outputs, name=name)
