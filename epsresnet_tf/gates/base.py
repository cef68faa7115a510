"""What a gate kind is: the interface every entry of the registry fills in.

A gate kind knows its Keras layer and how a unit builds it, its monitor fields, its
scheduled hyper-parameters, how a trained gate is certified ("closed" / "open" / "mixed")
and how a kept gate leaves the reduced standard ResNet (folded into a conv, or exact as
it stands). `ScalarGateKind` fills most of it in for gates u = φ·F + x with one learned
scalar φ (the k gate; a new scalar gate needs its layer and `factor_tensor`).
"""

import abc
import dataclasses
from typing import Any, ClassVar, Mapping

import numpy as np


def to_float(v: Any) -> float:
    """A Python float of a variable, tensor or number."""
    return float(np.asarray(v.numpy() if hasattr(v, "numpy") else v))


@dataclasses.dataclass
class BlockVerdict:
    """One block's certificate entry: `verdict` is "closed" (its branch provably contributes
    0), "open" or "mixed"; `details` are the kind's own numbers (ε, max |F|, images open; k,
    g). `removable` and `reason`, set by `compress.certify`: whether the unit is then exactly
    what the reduced net puts in its place (a closed unit whose shortcut scales x is not) and
    why, in words."""

    block: str
    kind: str
    verdict: str
    ema: float | None = None
    details: dict = dataclasses.field(default_factory=dict)
    removable: bool | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        out = {"block": self.block, "kind": self.kind, "verdict": self.verdict, **self.details}
        if self.ema is not None:
            out["ema"] = self.ema
        out.update(removable=self.removable, reason=self.reason)
        return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass
class Fold:
    """A kept gate leaving the reduced net: the conv whose kernel absorbs `factor`."""

    conv: Any
    factor: float


class LayerOf:
    """A built-in kind's `layer`, named by its class in `epsresnet_tf.layers` and imported
    on first read: every command's parser reads the registry (`--gate` choices), and
    importing Keras there would make `epsresnet --help` take seconds."""

    def __init__(self, class_name: str):
        self.class_name = class_name

    def __get__(self, instance: Any, owner: type) -> type:
        from epsresnet_tf import layers

        return getattr(layers, self.class_name)


class GateKind(abc.ABC):
    """One gate kind. Subclass, fill in the class attributes, override what differs and
    register it with `@register_gate` (epsresnet_tf.gates.registry)."""

    #: The config value (`"gate": name`), the kind in certificates.
    name: ClassVar[str] = ""
    #: How messages name its gates ("ε" → "ε-gates").
    label: ClassVar[str] = ""
    #: The Keras layer (a `layers.GateLayer`), or `LayerOf(its class name in layers.py)`.
    layer: ClassVar[type] = None
    #: Its layer's name in a unit: `group{g}_block{b}_` + suffix.
    suffix: ClassVar[str] = ""
    #: True: the layer takes [F, x] and merges them (u = φ·F + x); False: it maps F to S(F)
    #: and the unit adds the shortcut.
    merges: ClassVar[bool] = False
    #: The unit's output with this gate, for messages.
    formula: ClassVar[str] = "S(F) + x"
    #: Scalar variables on the layer, set per epoch by schedules (name → layer attribute):
    #: each is a history column, a console value, a TensorBoard `schedule/<name>` chart
    #: and a certificate field (`hyper_details`).
    hyper_parameters: ClassVar[tuple[str, ...]] = ()
    #: How the console writes a hyper-parameter ("epsilon" → "ε"); default: its name.
    hyper_labels: ClassVar[dict[str, str]] = {}
    #: The run-config keys this kind owns, with their defaults: recipes, `--set` and
    #: config.json carry them (the gate section of `runconfig.RunConfig`).
    settings: ClassVar[dict[str, Any]] = {}
    #: What a saved config.json that lacks one of `settings` meant (run folders written
    #: before the key existed); None: the defaults.
    saved_settings: ClassVar[dict[str, Any] | None] = None
    #: False only for the no-gate kind ("none"): plain residual units, no layer.
    gated: ClassVar[bool] = True
    #: Whether the adaptive learning-rate reset (docs/semantics.md §7) applies to its runs.
    adaptive_reset: ClassVar[bool] = False
    #: Whether `--gates plain` (the authors' reduced net) drops kept gates that are not
    #: exactly an identity on the data (ε-gates taken as T = 1); otherwise they stay.
    plain_drops_inexact: ClassVar[bool] = False

    # --- settings ---------------------------------------------------------------------

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """UserError (one line, naming the key) where the kind's `settings` cannot train."""
        return None

    def hyper_label(self, name: str) -> str:
        return self.hyper_labels.get(name, name)

    def hyper_details(self, layer) -> dict:
        """{hyper-parameter: its value on `layer`}: the certificate's record of them."""
        return {h: to_float(getattr(layer, h)) for h in self.hyper_parameters}

    # --- building ---------------------------------------------------------------------

    def validate(self, config) -> None:
        """ValueError where a NetConfig cannot carry this gate."""
        if self.merges and config.shortcut_merges:
            raise ValueError(
                f"gate {self.name!r} merges the branches itself ({self.formula}); it "
                f"cannot combine with shortcut {config.shortcut!r}: use another "
                "gate or none, or shortcut identity, conv1x1 or dropout"
            )

    def net_options(self, settings: Mapping[str, Any], training_start: bool = False) -> dict:
        """NetConfig fields of this kind from its settings (`training_start`: the values the
        net is built with before the first epoch's schedules). A kind outside the package
        passes its own as {"gate_options": {...}}, which its `make_layer` reads."""
        return {}

    @abc.abstractmethod
    def make_layer(self, config, name: str):
        """The gate layer of one unit, from the network's NetConfig."""

    def plain_merge(self, f, x, config, prefix: str):
        """A gate between plain (non-residual) layers f and x: the gates paper's plain nets."""
        raise ValueError(
            f"the {self.name} gate sits on a residual branch; use mnist-res-D or --gate k"
        )

    def schedules(self, settings: Mapping[str, Any]) -> dict:
        """{hyper-parameter: per-epoch schedule (train.schedules.PiecewiseSchedule)} from
        the kind's settings."""
        return {}

    # --- monitoring -------------------------------------------------------------------

    @abc.abstractmethod
    def discarded_now(self, layer):
        """ "Discarded" in the training step just run, a float32 tensor in [0, 1]."""

    def monitor(self, layer) -> dict:
        """Per-epoch monitor fields besides "discarded" (history rows, TensorBoard): {field:
        scalar variable}, read once per epoch with all the others (train/monitor.py)."""
        return {}

    def factor(self, layer) -> float | None:
        """The learned scalar the gate multiplies F by (removal order greedy-k, block
        contributions); None where the gate depends on the data."""
        return None

    # --- certification and folding ----------------------------------------------------

    def scope(self, layer) -> str | None:
        """The gate's own scope ("batch" / "sample") where it has one."""
        return None

    @abc.abstractmethod
    def certify(self, model, layers: dict, datasets: dict, scope: str):
        """({block id: BlockVerdict}, {split: images}, {split: batches}) for this kind's
        gates `layers` ({block id: layer}) of `model`."""

    @abc.abstractmethod
    def plain_decision(self, layers: dict, certificate) -> tuple[bool, dict, str]:
        """(exact, {block id: Fold}, why): whether dropping the kept gates `layers`
        changes nothing on the certified data, the folds that make it so, and why."""

    # --- deployment ---------------------------------------------------------------------

    def batch_dependent(self, layer) -> bool:
        """Whether a kept gate's T for an image depends on the other images of its batch at
        inference (a batch statistic, as BatchNormalization's in training mode)."""
        return False

    def deployed_gate(self, layer) -> tuple[float, str] | None:
        """(T, what it was decided from, in words) for a batch-independent deployment,
        decided once from what training measured (compress/deploy.py); None: nothing
        measured to decide from."""
        return None


class ScalarGateKind(GateKind):
    """u = φ·F + x with φ a function of one learned scalar: closed exactly when φ = 0 (no
    data needed); a kept gate folds into its unit's last conv, φ·conv_W(x) = conv_{φW}(x)."""

    merges = True
    #: How messages write φ ("g(k)").
    factor_name: ClassVar[str] = "φ"

    @abc.abstractmethod
    def factor_tensor(self, layer):
        """φ as a float32 tensor."""

    def factor(self, layer) -> float:
        return to_float(self.factor_tensor(layer))

    def discarded_now(self, layer):
        from keras import ops

        return ops.cast(ops.equal(self.factor_tensor(layer), 0.0), "float32")

    def verdict_details(self, layer) -> dict:
        return {"g": self.factor(layer)}

    def certify(self, model, layers, datasets, scope):
        verdicts = {
            b: BlockVerdict(
                b,
                self.name,
                "closed" if self.factor(l) == 0 else "open",
                ema=to_float(l.discarded_ema),
                details={**self.verdict_details(l), **self.hyper_details(l)},
            )
            for b, l in layers.items()
        }
        return verdicts, {}, {}

    def foldable(self, layer):
        """The conv a gate folds into: its residual input's producer when that is a
        bias-free Conv2D used once (a shared stage kernel serves units with other φ)."""
        import keras

        if getattr(layer, "mode", "residual") != "residual":
            return None
        conv = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if (
            isinstance(conv, keras.layers.Conv2D)
            and not conv.use_bias
            and len(conv._inbound_nodes) == 1
        ):
            return conv
        return None

    def plain_decision(self, layers, certificate):
        convs = {b: self.foldable(l) for b, l in layers.items()}
        unfoldable = [b for b, c in convs.items() if c is None]
        exact = not unfoldable
        why = (
            f"every kept {self.factor_name} folds into its unit's last conv"
            if exact
            else f"{self.factor_name} cannot fold into a shared or non-conv last layer: "
            f"{', '.join(unfoldable[:5])}"
        )
        folds = {b: Fold(c, self.factor(layers[b])) for b, c in convs.items() if c is not None}
        return exact, folds, why


class NoGate(GateKind):
    """ "none": plain residual units u = F + x, no gate layer, nothing to monitor or
    certify. An entry like the others, so that callers ask it instead of testing the name."""

    name = "none"
    label = "no"
    gated = False

    def make_layer(self, config, name):
        raise ValueError("the no-gate kind has no layer")

    def plain_merge(self, f, x, config, prefix):
        return f  # a plain net without gates: the layers in sequence

    def discarded_now(self, layer):
        raise ValueError("the no-gate kind has no layer")

    def certify(self, model, layers, datasets, scope):
        return {}, {}, {}

    def plain_decision(self, layers, certificate):
        return True, {}, "no gates"
