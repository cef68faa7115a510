"""The ε gate of epsilon-ResNet (docs/semantics.md §1): S(F) = T(F)·F, T = 0 when every
|F| is below ε. Its layer is `layers.EpsilonGate`.

Why per-image values certify both scopes: with L fixed, T = relu(1 - L relu(1 - L s)) is
non-decreasing in s, and the batch-scope s is the maximum of the per-image s (inference
BatchNorm makes each image's residual independent of its batch). So a block's batch T is
the maximum of its images' T: T = 0 on every batch of *any* composition and size exactly
when T = 0 for every image — the batch-scope and sample-scope certificates coincide, and
they hold at batch 1 as well as at the run's batch size. "open" is weaker: in batch scope
it is checked at the given batch size and order only, since one open image opens its
whole batch.
"""

import numpy as np

from epsresnet_tf.data.batches import iter_images
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates.base import BlockVerdict, GateKind, LayerOf, to_float
from epsresnet_tf.gates.registry import gate_by_block, register_gate
from epsresnet_tf.train.schedules import epsilon_schedule


def gate_responses(model, data):
    """Per-image max |F| at each ε-gate's input: ({block id: float32 array (images,)},
    [batch lengths]). One inference pass over `data` (batches of images or (images, labels))."""
    import keras
    import tensorflow as tf

    from epsresnet_tf import layers as L

    gates = {b: l for b, l in gate_by_block(model).items() if isinstance(l, L.EpsilonGate)}
    if not gates:
        return {}, []
    ids = list(gates)
    probe = keras.Model(model.inputs, [gates[b].input for b in ids])

    @tf.function(reduce_retracing=True)
    def maxima(x):
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [
            tf.reduce_max(tf.abs(tf.cast(o, tf.float32)), axis=list(range(1, len(o.shape))))
            for o in outs
        ]

    per = {b: [] for b in ids}
    sizes = []
    for x in iter_images(data):
        values = maxima(tf.convert_to_tensor(x))
        sizes.append(int(values[0].shape[0]))
        for b, v in zip(ids, values):
            per[b].append(v.numpy())
    return {b: np.concatenate(v) if v else np.zeros(0, np.float32) for b, v in per.items()}, sizes


def per_image_gate(layer, maxima):
    """T of each image given its max |F|, with the layer's own formula: a sample-scope gate on
    an (N, 1) tensor whose only entry is max |F| has s = relu(max |F| - ε), as on F itself."""
    import tensorflow as tf

    from epsresnet_tf import layers as L

    probe = L.EpsilonGate(to_float(layer.epsilon), scope="sample", sharpness=layer.sharpness)
    probe.build((None, 1))
    probe.epsilon.assign(layer.epsilon)  # bit-identical ε, not a float64 round trip
    t = probe.gate(tf.convert_to_tensor(np.asarray(maxima, np.float32)[:, None]))
    return np.asarray(t).reshape(-1)


def batch_gate(per_image, sizes):
    """Batch-scope T of consecutive batches of the given sizes: the maximum of per-image T
    (T is non-decreasing in s and the batch s is the max of the per-image s)."""
    out, start = [], 0
    for n in sizes:
        out.append(float(per_image[start : start + n].max()) if n else 0.0)
        start += n
    return np.asarray(out, np.float32)


def _joined(parts):
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@register_gate
class EpsilonKind(GateKind):
    name = "eps"
    label = "ε"
    layer = LayerOf("EpsilonGate")
    suffix = "eps_gate"
    hyper_parameters = ("epsilon",)
    hyper_labels = {"epsilon": "ε"}
    settings = {
        "epsilon": 2.5,  # the paper's CIFAR ε (docs/semantics.md §1)
        "epsilon_start_epoch": 0,  # ε is 0 before it (the authors' CIFAR warm-up: 150)
        "gate_scope": "batch",  # T per batch (the authors') or per image ("sample")
    }
    #: A config.json without ε (written before it was a key) trained no ε.
    saved_settings = {"epsilon": 0.0, "epsilon_start_epoch": 0, "gate_scope": "batch"}
    adaptive_reset = True
    plain_drops_inexact = True

    def check_settings(self, settings):
        eps = settings["epsilon"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps):
            raise UserError(f"epsilon must be finite, got {eps!r}")
        if eps < 0:
            raise UserError(f"epsilon must be >= 0, got {eps}")
        if settings["gate_scope"] not in ("batch", "sample"):
            raise UserError(
                f"gate_scope must be 'batch' or 'sample', got {settings['gate_scope']!r}"
            )
        epsilon_schedule(eps, settings["epsilon_start_epoch"])

    def net_options(self, settings, training_start=False):
        epsilon = settings.get("epsilon", 0.0)
        if training_start and settings.get("epsilon_start_epoch", 0) != 0:
            epsilon = 0.0  # the schedule sets ε from its start epoch
        return {"epsilon": epsilon, "gate_scope": settings.get("gate_scope", "batch")}

    def make_layer(self, config, name):
        return self.layer(
            config.epsilon, config.gate_scope, group_size=config.gate_group, name=name
        )

    def schedules(self, settings):
        return {"epsilon": epsilon_schedule(settings["epsilon"], settings["epsilon_start_epoch"])}

    def discarded_now(self, layer):
        """1 − T (the mean over images or gate groups where T is not one number)."""
        from keras import ops

        return 1.0 - ops.convert_to_tensor(layer.gate_value)

    def monitor(self, layer):
        return {
            "gate": layer.gate_value,
            "response_max": layer.response_max,
            "response_mean": layer.response_mean,
        }

    def scope(self, layer):
        return layer.scope

    def certify(self, model, layers, datasets, scope):
        maxima = {b: [] for b in layers}
        batch_ts = {b: [] for b in layers}
        image_ts = {b: [] for b in layers}
        images, batches = {}, {}
        for split, data in datasets.items():
            resp, sizes = gate_responses(model, data)
            images[split], batches[split] = int(sum(sizes)), len(sizes)
            for b in layers:
                t = per_image_gate(layers[b], resp[b])
                maxima[b].append(resp[b])
                image_ts[b].append(t)
                batch_ts[b].append(batch_gate(t, sizes) if scope == "batch" else t)
        verdicts = {}
        for b, layer in layers.items():
            m, ti, tb = _joined(maxima[b]), _joined(image_ts[b]), _joined(batch_ts[b])
            if not len(ti):
                raise UserError("no images to certify ε-gates on: give a non-empty dataset")
            verdict = "closed" if np.all(ti == 0) else "open" if np.all(tb == 1) else "mixed"
            verdicts[b] = BlockVerdict(
                b,
                self.name,
                verdict,
                ema=to_float(layer.discarded_ema),
                details={
                    **self.hyper_details(layer),
                    "max_response": float(m.max()),
                    "images_open": int(np.sum(ti > 0)),
                    "batches_open": int(np.sum(tb > 0)),
                    "batches_partly_open": int(np.sum((tb > 0) & (tb < 1))),
                },
            )
        return verdicts, images, batches

    def batch_dependent(self, layer):
        return layer.scope == "batch"  # one T per batch (or per group of images)

    def deployed_gate(self, layer):
        """T at the moving average of max |F| the monitors kept (`response_max`: of the
        batch max in batch scope, of each group's max with groups), by the gate's own
        formula: what BatchNormalization's moving statistics are to its batch statistics.
        None for a gate that never trained (no average yet)."""
        if to_float(layer.monitor_steps) == 0:
            return None
        peak = to_float(layer.response_max)
        t = float(per_image_gate(layer, [peak])[0])
        side = "above" if t == 1 else "below" if t == 0 else "within 1/L of"
        return (
            t,
            f"the moving average of max |F|, {peak:.4g}, is {side} ε = {to_float(layer.epsilon):g}",
        )

    def plain_decision(self, layers, certificate):
        """Exact where every kept gate is open (T = 1) on every certified batch."""
        if certificate is None:
            return False, {}, "no certificate: kept ε-gates cannot be shown open"
        not_open = [b for b in layers if certificate.blocks[b].verdict != "open"]
        if not not_open:
            return True, {}, "every kept ε-gate is open (T = 1) on every certified batch"
        return (
            False,
            {},
            (f"kept ε-gates not open on every certified batch: {', '.join(not_open[:5])}"),
        )
