"""Savarese et al.'s residual gate (docs/semantics.md §3): u = g(k)·F + x, g = ReLU, one
learned scalar k per unit. Its layer is `layers.ResidualGate`; in the plain MNIST nets it
interpolates, u = g(k)·f + (1 − g(k))·x."""

from epsresnet_tf.gates.base import LayerOf, ScalarGateKind, to_float
from epsresnet_tf.gates.registry import register_gate


@register_gate
class KKind(ScalarGateKind):
    name = "k"
    label = "k"
    layer = LayerOf("ResidualGate")
    suffix = "k_gate"
    formula = "g(k) F + x"
    factor_name = "g(k)"

    def make_layer(self, config, name):
        return self.layer("residual", config.k_decay, name=name)

    def plain_merge(self, f, x, config, prefix):
        return self.layer("plain", config.k_decay, name=prefix + self.suffix)([f, x])

    def factor_tensor(self, layer):
        return layer.gate_value  # relu(k)

    def monitor(self, layer):
        return {"k": layer.k}

    def verdict_details(self, layer):
        k = to_float(layer.k)
        return {"k": k, "g": max(k, 0.0)}
