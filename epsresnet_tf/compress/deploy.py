"""Deployment (docs/semantics.md §9): the exported net answers an image the same alone as in
any batch.

A kept batch-scope ε-gate decides T from max |F| over its batch: at inference that is a
batch statistic, the position BatchNormalization is in during training. As BN then uses
its moving statistics, policy "auto" decides each such gate once from what training kept
(`GateKind.deployed_gate`: for ε, T at the moving average of the block's max |F|):
  T = 1  the gate goes: the unit is a plain residual unit;
  T = 0  the block goes where its unit is then what the reduced net puts in its place
         (`closed_unit`); elsewhere its branch is scaled by 0;
  other  (the average within 1/L of ε) the branch is scaled by that constant T;
  none   (a gate that never trained) T per image.
Where every kept gate ends at T = 1 or removed, the deployed net is a standard ResNet.
Policy "sample" gives every such gate its per-image T (the paper's equation: the gated net
at batch 1, which compress measures beside); "keep" exports the gates as trained, whose
answers depend on the batch.
"""

import dataclasses
from typing import TYPE_CHECKING, Any

from epsresnet_tf import gates as G
from epsresnet_tf.compress.certificate import closed_unit
from epsresnet_tf.compress.reduction import reduce
from epsresnet_tf.exports import standard_net
from epsresnet_tf.gates import gate_by_block

if TYPE_CHECKING:
    import keras

    from epsresnet_tf.compress.certificate import Certificate

#: What the exported net does with a kept batch-dependent gate, per `--gates` policy.
DEPLOYS = {
    "auto": "decided once from their training statistics",
    "sample": "decided per image",
    "keep": "deciding per batch",
}

PER_IMAGE = "sample"  # a decision: T from each image alone (exports.standard_net)


@dataclasses.dataclass(frozen=True)
class Deployment:
    """The deployed net and what was decided: `net` the standard-layer net to export (None:
    the certified net as it is) and `reduced` the same net in this package's layers,
    `decisions` {block id: {"verdict" (the certificate's), "T", "decision", "why"}} for
    each kept batch-dependent gate,
    `removed` the blocks the decisions remove beyond the certificate's, `info` the
    deployed net's reduction info (None: the certified one's)."""

    policy: str
    net: Any = None
    reduced: Any = None
    decisions: dict = dataclasses.field(default_factory=dict)
    removed: list = dataclasses.field(default_factory=list)
    info: dict | None = None

    @property
    def batch_dependent(self) -> bool:
        return any(d["decision"] == "per batch" for d in self.decisions.values())


def batch_dependent_gates(model: "keras.Model", kept: list[str]) -> dict:
    """{block id: gate layer} of the kept blocks whose gate decides from its batch."""
    by_block = gate_by_block(model)
    return {
        b: by_block[b]
        for b in kept
        if b in by_block and G.kind_of(by_block[b]).batch_dependent(by_block[b])
    }


def _decide(model, bid, layer, policy):
    """One gate's decision: {"T": number or None (per image or per batch), "decision",
    "why"}."""
    if policy == "keep":
        return {
            "T": None,
            "decision": "per batch",
            "why": "kept as trained (--gates keep): T from each batch's max |F|, so an "
            "image's answer depends on the batch it is in",
        }
    measured = G.kind_of(layer).deployed_gate(layer) if policy == "auto" else None
    if measured is None:
        why = (
            "T per image (--gates sample)"
            if policy == "sample"
            else "T per image: the gate never trained, so there is no moving average to decide from"
        )
        return {"T": None, "decision": "per image", "why": why}
    t, basis = measured
    if t == 1:
        return {"T": 1.0, "decision": "open", "why": f"open (T = 1): {basis}; the gate is dropped"}
    if t == 0:
        removable, reason = closed_unit(model, bid)
        if removable:
            return {"T": 0.0, "decision": "removed", "why": f"closed (T = 0): {basis}; removed"}
        return {
            "T": 0.0,
            "decision": "scaled",
            "why": f"closed (T = 0): {basis}; its branch is scaled by 0 ({reason})",
        }
    return {
        "T": t,
        "decision": "scaled",
        "why": f"T = {t:.4g}: {basis}; its branch is scaled by that constant",
    }


def deploy(
    model: "keras.Model",
    arch: str,
    build_options: dict,
    removable: list[str],
    certified: tuple["keras.Model", dict],
    certificate: "Certificate",
    policy: str,
) -> Deployment:
    """The deployed net of the certified reduction `certified` (net, info) of `model`
    without `removable`, by `policy` ("auto", "sample" or "keep"; others: the certified net
    as it is, having no kept batch-dependent gate)."""
    net, info = certified
    dependent = batch_dependent_gates(model, list(info["renumbered"]))
    if policy not in DEPLOYS or info["reduced_gates"] == "none" or not dependent:
        return Deployment(policy)
    decisions = {
        b: {"verdict": certificate.blocks[b].verdict, **_decide(model, b, layer, policy)}
        for b, layer in dependent.items()
    }
    if policy == "keep":
        return Deployment(policy, decisions=decisions)
    gone = [b for b, d in decisions.items() if d["decision"] == "removed"]
    rest = {b: d for b, d in decisions.items() if d["decision"] != "removed"}
    if all(d["decision"] == "open" for d in rest.values()):  # a standard ResNet
        net, info = reduce(model, arch, build_options, removable + gone, "plain", certificate)
        info = dict(
            info,
            gate_decision="standard ResNet: every kept gate decided once from its training "
            "statistics (certificate.json's deployment)",
        )
        return Deployment(policy, standard_net(net)[0], net, decisions, gone, info)
    if gone:
        net, info = reduce(model, arch, build_options, removable + gone, "keep", certificate)
    gates_of = gate_by_block(net)
    fixed = {
        gates_of[info["renumbered"][b]].name: PER_IMAGE if d["T"] is None else d["T"]
        for b, d in rest.items()
    }
    return Deployment(policy, standard_net(net, decisions=fixed)[0], net, decisions, gone, info)


def deployment_doc(deployment: Deployment, logits, gated: Any, client_batch: int) -> dict:
    """certificate.json's "deployment": what was decided per gate and the exported net's
    answers alone against in a batch (`logits`: check.Logits; `gated` the certified net in
    standard layers, whose errors at both batches are beside the deployed net's)."""
    exported = deployment.net or gated
    alone = logits.compare(exported, exported, client_batch, a_batch=None)
    at_run = logits.compare(gated, exported)
    at_client = logits.compare(gated, exported, client_batch)
    return {
        "policy": deployment.policy,
        "gates": deployment.decisions,
        "removed": deployment.removed,
        "batch_independent": alone["same_top1"] == alone["images"],
        # the same net's logits alone and in the run's batches: equal but for the rounding of
        # kernels chosen by batch size, where no gate depends on the batch
        "alone_vs_in_batch": {k: alone[k] for k in ("images", "same_top1", "max_abs_logit_diff")},
        "test_error": {
            "batch_1": at_client.get("error_reduced"),
            "run_batch": at_run.get("error_reduced"),
        },
        "gated_test_error": {
            "batch_1": at_client.get("error_full"),
            "run_batch": at_run.get("error_full"),
        },
        "same_top1_as_gated": {"batch_1": at_client["same_top1"], "run_batch": at_run["same_top1"]},
        "images": {"batch_1": at_client["images"], "run_batch": at_run["images"]},
    }
