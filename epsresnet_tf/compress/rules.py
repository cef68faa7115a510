"""The two compression rules — the certificate and the authors' moving-average (EMA) rule —
their gate policies, and both rules' reduced nets and checks."""

import dataclasses
from typing import Any

from epsresnet_tf.errors import UserError
from epsresnet_tf.exports import standard_net

#: What each rule's net is called in certificate.json and the printed summary.
RULES = {"certificate": "certified", "ema": "authors' EMA rule"}


def policies(rule, gates):
    """Each rule's gate policy: "auto" for the certificate, "plain" (the authors' standard
    ResNet) for the EMA rule, and `gates` where given for the exported `rule`."""
    if rule not in RULES:
        raise UserError(f"rule must be 'certificate' or 'ema', not {rule!r}")
    policy = {"certificate": "auto", "ema": "plain"}
    if gates is not None:
        policy[rule] = gates
    return policy


@dataclasses.dataclass(frozen=True)
class Reductions:
    """Both rules' reduced nets: the exported `rule`, what each rule removes and its gate
    policy ({rule: …}), each one's net, reduction info and check, and `exported`, the
    exported rule's net in Keras's own layers (exports.standard_net)."""

    rule: str
    removable: dict
    policy: dict
    nets: dict
    infos: dict
    checks: dict
    exported: Any


def reduce_by_both_rules(rule, removable, policy, reduce_net, check):
    """Each rule's reduced net (`reduce_net(removable ids, gate policy)` -> (net, info)), its
    info and its check (`check(net)`), the exported `rule`'s first; that rule's net is
    checked as it is exported, in Keras's own layers (exports.standard_net)."""
    nets, infos, checks, exported = {}, {}, {}, None
    for name in (rule,) + tuple(r for r in RULES if r != rule):
        nets[name], infos[name] = reduce_net(removable[name], policy[name])
        if name == rule:
            exported, _ = standard_net(nets[name])
        checks[name] = check(exported if name == rule else nets[name])
    return Reductions(rule, removable, policy, nets, infos, checks, exported)
