"""Certification: which blocks provably contribute nothing (per-block verdicts from each gate
kind's `certify`), which of those a reduced net can drop exactly (`closed_unit`), and the
authors' moving-average rule beside it (docs/semantics.md)."""

import dataclasses
from typing import TYPE_CHECKING, Any

from epsresnet_tf import gates as G
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block, to_float
from epsresnet_tf.naming import layer_prefix, parse_block_id, sort_block_ids
from epsresnet_tf.transform import gated_units

if TYPE_CHECKING:
    import keras

#: The authors' rule (docs/semantics.md): a block goes when its is_discarded moving average
#: (decay 0.95), as their training log prints it, reads 1. tensorpack 0.2.0 prints monitor
#: scalars with 5 significant digits ('{:.5g}'), so a value in [0, 1] reads 1 exactly when
#: it rounds up from 0.99999, i.e. when it is >= 1 - 0.5e-5 = 0.999995. The value is a
#: float32: no float32 lies between the double 0.999995 and the decimal one (the neighbours
#: are 0.99999493… and 0.99999505…), so `ema >= EMA_THRESHOLD` and "prints as 1" agree on
#: every float32 (tests/test_compress.py checks this).
EMA_DIGITS = 5
EMA_THRESHOLD = 1 - 0.5 * 10**-EMA_DIGITS  # 0.999995


@dataclasses.dataclass
class Certificate:
    scope: str
    batch_size: int
    images: dict  # split -> images certified
    batches: dict  # split -> batches
    blocks: dict  # id -> BlockVerdict

    @property
    def closed(self):
        """Blocks whose gate is closed on every certified image (their branch adds 0)."""
        return sort_block_ids(b for b, v in self.blocks.items() if v.verdict == "closed")

    @property
    def removable(self):
        """The closed blocks the certificate removes: those whose unit is then exactly what
        the reduced net puts in its place (`closed_unit`); the others are kept."""
        return sort_block_ids(b for b, v in self.blocks.items() if v.removable)

    def as_dict(self):
        return {
            "scope": self.scope,
            "batch_size": self.batch_size,
            "images": self.images,
            "batches": self.batches,
            "blocks": {b: self.blocks[b].as_dict() for b in sort_block_ids(self.blocks)},
        }


#: He et al.'s shortcut gatings (layers.SigmoidShortcutGate modes) by their config name.
_GATINGS = {"exclusive": "exclusive_gating", "shortcut_only": "shortcut_only_gating"}
_KEPT = "closed but kept: "


def _inputs(layer):
    """The tensors a unit's layer was called on (each is called once)."""
    return list(layer._inbound_nodes[0].input_tensors)


def _producer(tensor):
    return tensor._keras_history.operation


def _nonnegative(tensor):
    """Whether `tensor` is provably >= 0: a ReLU's output, seen through layers that keep
    signs at inference (pooling, the pool+pad shortcut, dropout)."""
    import keras

    from epsresnet_tf import layers as L

    keeps_sign = (
        keras.layers.MaxPooling2D,
        keras.layers.AveragePooling2D,
        keras.layers.Dropout,
        L.PoolPadShortcut,
    )
    layer = _producer(tensor)
    while isinstance(layer, keeps_sign):
        layer = _producer(_inputs(layer)[0])
    return (
        isinstance(layer, keras.layers.ReLU)
        and not layer.negative_slope
        and float(layer.threshold) >= 0
    )


def closed_unit(model: "keras.Model", bid: str) -> tuple[bool, str]:
    """(removable, why): whether unit `bid` of `model`, its gated branch adding 0, is exactly
    what the reduced net puts in its place — nothing where its shortcut is the identity
    (dropout: at inference), the group's transition where it is the first unit's pool+pad
    or projection shortcut. He et al.'s merging shortcuts still map x (constant scaling λx,
    the gatings (1 − g(x))·x), as do the conv1x1 shortcut, BN-ReLU after the addition
    (bn_after_add) and a ReLU after it (original) unless x >= 0: those units are kept."""
    from epsresnet_tf import layers as L

    g, b = parse_block_id(bid)
    p = layer_prefix(g, b)
    unit = {l.name[len(p) :]: l for l in model.layers if l.name.startswith(p)}
    if len(unit) == 1:  # only its gate: a graph gated by transform.gate_model
        gated = gated_units(model)[bid]
        shortcut = _inputs(gated.merge)[gated.shortcut]
        return True, (
            f"closed: the unit is then its shortcut ({_producer(shortcut).name} into "
            f"{gated.merge.name}), which the graph keeps"
        )
    scale = unit.get("shortcut_scale")
    if scale is not None and (float(scale.scale), float(scale.offset)) != (1.0, 0.0):
        # λx cannot fold exactly into the next unit: its BatchNorm and shortcut both see it
        return False, (
            _KEPT + f"its constant_scaling shortcut scales x by {float(scale.scale):g}, "
            "not an identity"
        )
    gate = unit.get("shortcut_gate")
    if isinstance(gate, L.SigmoidShortcutGate):
        return False, (
            _KEPT + f"its {_GATINGS[gate.mode]} shortcut scales x by 1 − sigmoid(conv(x)), "
            "not an identity"
        )
    conv = unit.get("shortcut_conv")
    # Equal shapes: He et al.'s conv1x1 variant, which no transition keeps (a projection
    # changes the channels or the resolution).
    if conv is not None and tuple(conv.input.shape) == tuple(conv.output.shape):
        return False, _KEPT + "its conv1x1 shortcut maps x by a learned 1×1 conv, not an identity"
    if "out_bn" in unit:
        return False, _KEPT + "BN-ReLU after the addition (order bn_after_add) changes x"
    if "shortcut_pool_pad" in unit or conv is not None:
        kind = "pool+pad" if conv is None else "projection"
        why = f"closed: the unit is then its {kind} shortcut, kept as group{g}'s transition"
    elif "shortcut_dropout" in unit:
        why = "closed: the unit is then its dropout shortcut, the identity at inference"
    else:
        why = "closed: the unit is then its identity shortcut"
    relu = unit.get("out_relu")
    merge = _producer(relu.input) if relu is not None else None
    if merge is not None and len(_inputs(merge)) == 2:  # a ReLU after the addition
        if not _nonnegative(_inputs(merge)[1]):
            return False, (
                _KEPT + "the ReLU after the addition (order original) changes its shortcut, "
                "which can be negative"
            )
        why += "; the ReLU after the addition sees x >= 0"
    return True, why


def certify(
    model: "keras.Model", datasets: dict, scope: str | None = None, batch_size: int | None = None
) -> "Certificate":
    """Per-block verdicts for every gate of `model`, each by its kind's `certify`; every
    verdict says whether the certificate removes its block and why (`closed_unit`).

    datasets: {split name: iterable of batches} in the order the run would see them (the
    run's batch size: batch-scope "open" depends on the batching; "closed" does not).
    scope: "batch" or "sample" (default: the gates' own). k-gates need no data: closed
    exactly when g(k) = relu(k) = 0.
    """
    gates = gate_by_block(model)
    scopes = {G.kind_of(l).scope(l) for l in gates.values()} - {None}
    scope = scope or (scopes.pop() if len(scopes) == 1 else "batch")
    if scope not in ("batch", "sample"):
        raise UserError(f"scope must be 'batch' or 'sample', not {scope!r}")
    by_kind = {}
    for b, layer in gates.items():
        by_kind.setdefault(G.kind_of(layer).name, {})[b] = layer
    verdicts, images, batches = {}, {}, {}
    for name, layers in by_kind.items():
        v, i, n = G.get_gate(name).certify(model, layers, datasets, scope)
        verdicts.update(v)
        images.update(i)
        batches.update(n)
    verdicts = {b: verdicts[b] for b in gates}  # network order
    for b, v in verdicts.items():
        if v.verdict == "closed":
            v.removable, v.reason = closed_unit(model, b)
        else:
            v.removable = False
            v.reason = (
                "kept: its gate is open"
                if v.verdict == "open"
                else "kept: its gate is open on some certified images or batches"
            )
    return Certificate(scope, int(batch_size) if batch_size else None, images, batches, verdicts)


def printed_as_authors(value: float, digits: int = EMA_DIGITS) -> str:
    """A monitor value as tensorpack 0.2.0's text log printed it ('{:.5g}'): the authors'
    compressModel.py took a block whose printed is_discarded parses to 1.0."""
    return "{:.{}g}".format(float(value), digits)


def ema_removable(source: Any, threshold: float = EMA_THRESHOLD) -> list[str]:
    """The authors' rule (docs/semantics.md): blocks whose moving average of "discarded"
    reads 1 in their log, i.e. >= EMA_THRESHOLD (0.999995).
    `source`: a model (its gates' `discarded_ema`) or {block id: ema} (e.g. a history row's
    per-block "discarded")."""
    if hasattr(source, "layers"):
        emas = {b: to_float(l.discarded_ema) for b, l in gate_by_block(source).items()}
    else:
        emas = {b: (v["discarded"] if isinstance(v, dict) else float(v)) for b, v in source.items()}
    return sort_block_ids(b for b, v in emas.items() if v >= threshold)


def disagreements(certificate: "Certificate", ema_ids: list[str]) -> dict[str, list[str]]:
    """Where the moving-average rule and the certificate differ: "ema_only" blocks would be
    removed by the EMA rule but the certificate keeps them (not provably closed, or closed
    but no identity: removing them may change predictions); "certificate_only" blocks are
    provably removable but the EMA lags."""
    removable, ema = set(certificate.removable), set(ema_ids)
    return {
        "ema_only": sort_block_ids(ema - removable),
        "certificate_only": sort_block_ids(removable - ema),
    }
