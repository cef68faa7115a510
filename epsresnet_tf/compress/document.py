"""certificate.json's document: the certificate's verdicts, each rule's removals, sizes,
checks and test errors, where the rules disagree, and what the scope guarantees."""

from epsresnet_tf.compress.certificate import EMA_DIGITS, disagreements
from epsresnet_tf.compress.rules import RULES

SCOPE_NOTE = {
    "batch": (
        "Batch scope: a closed block has T = 0 for every certified image, hence on every "
        "batch of any size or order drawn from these images. A kept gate certified "
        "'open' was open on every batch at this batch size and order; on other batches "
        "(another size, batch 1, unseen images) it could still close, and a gated net "
        "would then differ from the plain reduced net."
    ),
    "sample": (
        "Sample scope: a closed block has T = 0 for every certified image; a kept gate "
        "certified 'open' was open for every certified image, and may close on unseen "
        "images."
    ),
}


#: The reduction's facts that certificate.json copies as they are.
_INFO_KEYS = (
    "blocks_per_group_before",
    "blocks_per_group_after",
    "renumbered",
    "reduced_gates",
    "gate_decision",
    "folded_k",
)


def certificate_doc(arch, cert, reductions, ema_threshold, sizes, exported_info=None):
    """certificate.json's document (before the caller's extras and "deployment") from the
    certificate and both rules' `reductions`; `sizes`: the model_size of the full and of
    the exported reduced net; `exported_info`: the exported net's reduction info where the
    deployment changed the certified net (deploy.py)."""
    rule, infos, checks, policy = (
        reductions.rule,
        reductions.infos,
        reductions.checks,
        reductions.policy,
    )
    ema_ids = reductions.removable["ema"]
    info, (before, after) = infos[rule], sizes
    dis = disagreements(cert, ema_ids)
    return {
        "arch": arch,
        "rule": rule,
        "scope": cert.scope,
        "certified_on": {
            "images": cert.images,
            "batches": cert.batches,
            "batch_size": cert.batch_size,
        },
        "removed": info["removed"],
        "removed_count": len(info["removed"]),
        "blocks_before": before["blocks"],
        "blocks_after": after["blocks"],
        **{key: (exported_info or info)[key] for key in _INFO_KEYS},
        "first_removed_groups": info["first_removed"],
        # a net compressed by graph rewrite: {block id: the unit's Add layer} (units.py)
        **({"units": info["units"]} if "units" in info else {}),
        "before": before,
        "after": after,
        "compression": {
            k: (before[k] / after[k] if after[k] else None)
            for k in ("params", "layers", "macs", "blocks")
        },
        "equivalence": checks[rule],
        "rules": {n: _rule_summary(n, policy[n], infos[n], checks[n]) for n in RULES},
        "disagreements": dis,
        "ema_rule": {
            "threshold": ema_threshold,
            "digits": EMA_DIGITS,
            "removable": ema_ids,
            "disagreements": dis,
        },
        "note": SCOPE_NOTE[cert.scope],
        "blocks": cert.as_dict()["blocks"],
    }


def _rule_summary(name, policy, info, check):
    """One rule's part of the certificate: what it removed, its net and its test error."""
    return {
        "net": RULES[name],
        "gates": policy,
        "removed": info["removed"],
        "removed_count": len(info["removed"]),
        "blocks_per_group_after": info["blocks_per_group_after"],
        "first_removed_groups": info["first_removed"],
        "reduced_gates": info["reduced_gates"],
        "gate_decision": info["gate_decision"],
        "test_error": check.get("error_reduced"),  # None on unlabelled check data
        "test_error_full": check.get("error_full"),
        "max_abs_logit_diff": check["max_abs_logit_diff"],
        "same_top1": check["same_top1"],
        "identical_predictions": check["passed"],
        "test_images": check["images"],
    }
