"""The model `fit` trains: the network wrapped with its loss, metrics and the discarded
count's moving average (docs/semantics.md §6–§7). Not saved itself: the run folder keeps the
network (model.keras) and every variable (checkpoints).

Imported by the training loop and the benchmarks when they train, so importing the loop
(e.g. for `epsresnet --help`) does not load TensorFlow.
"""

import dataclasses

import keras
import tensorflow as tf
from keras import ops

from epsresnet_tf.gates import get_gate, kind_of, read_hyper
from epsresnet_tf.layers import gate_layers, moving_average
from epsresnet_tf.models import build_model
from epsresnet_tf.runconfig import GateSection, RunConfig
from epsresnet_tf.train.monitor import discarded_now
from epsresnet_tf.train.optimizers import make_optimizer
from epsresnet_tf.train.skip import EXEMPT_BY_GATE, BranchSkip


class TrainingModel(keras.Model):
    """Wraps the network; owns the loss (docs/semantics.md §6) and the metrics. Not saved itself:
    the run folder keeps `net` (model.keras) and the variables (checkpoints)."""

    def __init__(
        self, net, side_weight=0.1, wd_every=0, wd_factor=0.2, top5=False, backward_skip=True
    ):
        super().__init__()
        self.net = net
        self.gates = gate_layers(net)
        # The backward of a block discarded in a step is skipped (train/skip.py): exact.
        # `backward_skip`: True, or False, or the reason it is off (a string).
        self.skip = BranchSkip(net) if backward_skip is True and self.gates else None
        self.skip_off_reason = (
            backward_skip if isinstance(backward_skip, str) else "backward_skip=false"
        )
        #: {hyper-parameter: its console label} of the net's gate kinds (ε): what history
        #: rows, the console and TensorBoard show besides the generic columns.
        self.hyper_labels = {
            h: kind.hyper_label(h)
            for kind in dict.fromkeys(kind_of(g) for g in self.gates)
            for h in kind.hyper_parameters
        }
        # The authors' `discarded_cnt` summary: ONE moving average of the per-step
        # count of discarded blocks, the statistic the adaptive reset reads
        # (docs/semantics.md §7); "mean" over replicas like the gates'.
        self.discarded_count = self.add_weight(
            name="discarded_count",
            shape=(),
            dtype="float32",
            trainable=False,
            initializer="zeros",
            aggregation="mean",
            autocast=False,
        )
        # The 1-based global step whose training loss first went non-finite (0: none yet),
        # set inside the step so that no step is missed and none costs a Python call; the
        # loop reads it at epoch end. Not in checkpoints: a checkpoint is only written
        # while it is 0.
        self.first_nonfinite_step = self.add_weight(
            name="first_nonfinite_step",
            shape=(),
            dtype="float32",
            trainable=False,
            initializer="zeros",
            aggregation="only_first_replica",
            autocast=False,
        )
        self.side_weight = float(side_weight)
        self.wd_every = int(wd_every or 0)
        self.wd_factor = float(wd_factor)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.xent_tracker = keras.metrics.Mean(name="xent")
        self.acc = keras.metrics.SparseCategoricalAccuracy(name="acc")
        self.side_acc = keras.metrics.SparseCategoricalAccuracy(name="side_acc")
        self.top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5") if top5 else None
        self.has_side = isinstance(net.output, dict)

    @property
    def metrics(self):
        ms = [self.loss_tracker, self.xent_tracker, self.acc]
        if self.has_side:
            ms.append(self.side_acc)
        if self.top5 is not None:
            ms.append(self.top5)
        return ms

    def call(self, x, training=False):
        return self.net(x, training=training)

    @property
    def monitor_variables(self):
        """Variables of the training model itself that a checkpoint must keep."""
        return [self.discarded_count]

    def discarded_count_value(self):
        return float(self.discarded_count.numpy())

    def _update_discarded_count(self):
        if self.gates:
            now = ops.sum(ops.stack([discarded_now(g) for g in self.gates]))
            moving_average(self.discarded_count, now, self.optimizer.iterations)

    def first_nonfinite_step_value(self) -> int | None:
        """The global step whose loss first went non-finite, or None."""
        step = int(self.first_nonfinite_step.numpy())
        return step or None

    def _flag_nonfinite(self, loss):
        """Record this step's number once, if its loss (on any replica) is NaN or Inf."""
        bad = ops.cast(ops.logical_not(ops.isfinite(loss)), "float32")
        ctx = tf.distribute.get_replica_context()
        if ctx is not None:  # a NaN on one replica is a NaN of the step: all replicas agree
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)  # ReduceOp has no MAX
            bad = ops.cast(ops.greater(total, 0.0), "float32")
        step = ops.cast(self.optimizer.iterations + 1, "float32")
        unset = ops.cast(ops.equal(self.first_nonfinite_step, 0.0), "float32")
        self.first_nonfinite_step.assign(self.first_nonfinite_step + bad * unset * step)

    def nonfinite_variables(self) -> list[str]:
        """Names of the float variables a checkpoint holds that have a NaN or Inf."""
        vs = [
            v
            for v in list(self.net.variables) + list(self.optimizer.variables)
            if "float" in str(v.dtype)
        ]
        if not vs:
            return []
        if getattr(self, "_finite_check", None) is None:  # one graph call, built once
            handles = [getattr(v, "value", v) for v in vs]
            self._finite_check = tf.function(
                lambda: tf.stack([tf.reduce_all(tf.math.is_finite(h)) for h in handles])
            )
        ok = self._finite_check().numpy()
        return [v.path for v, good in zip(vs, ok) if not good]

    def hyper_values(self) -> dict:
        """{hyper-parameter: its current value} of the net's gates (ε), in label order."""
        return {h: read_hyper(self.gates, h) for h in self.hyper_labels}

    def wd_scale(self):
        """The staircase factor on the decay, from the optimizer's step, in the graph."""
        if not self.wd_every:
            return ops.cast(1.0, "float32")
        k = ops.floor(ops.cast(self.optimizer.iterations, "float32") / float(self.wd_every))
        return ops.power(ops.cast(self.wd_factor, "float32"), k)

    def backward_skip_note(self) -> str | None:
        """One line where discarded blocks of a gated net still cost a backward pass: the
        skip is off, no block can skip, or a gate's kind or setting rules it out (the
        console says so at the start of a run). None otherwise, also where only blocks
        whose skip could change a rounding keep their backward (the unit after a side
        head: docs/PROFILE.md "Backward skip")."""
        if not self.gates:
            return None
        if self.skip is None:
            return (
                f"backward skip: off ({self.skip_off_reason}): discarded blocks still cost "
                "a backward pass"
            )
        exempt = self.skip.exempt
        ruled_out = [b for b, why in exempt.items() if why in EXEMPT_BY_GATE]
        if not exempt or (self.skip.branches and not ruled_out):
            return None
        reasons = sorted(set(exempt.values()))
        return (
            f"backward skip: off for {len(exempt)} of {len(self.gates)} blocks "
            f"({'; '.join(reasons)}): they cost a backward pass when discarded"
        )

    def _forward(self, x, y, training):
        if training and self.skip is not None:
            out = self.skip(x, training=True)
        else:
            out = self.net(x, training=training)
        side = None
        if isinstance(out, dict):
            logits, side = out["logits"], out["side_logits"]
        else:
            logits = out
        logits = ops.cast(logits, "float32")
        xent = ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        loss = xent
        if side is not None:
            side = ops.cast(side, "float32")
            loss = loss + self.side_weight * ops.mean(
                keras.losses.sparse_categorical_crossentropy(y, side, from_logits=True)
            )
        return loss, xent, logits, side

    def _update(self, loss, xent, y, logits, side):
        self.loss_tracker.update_state(loss)
        self.xent_tracker.update_state(xent)
        self.acc.update_state(y, logits)
        if side is not None:
            self.side_acc.update_state(y, side)
        if self.top5 is not None:
            self.top5.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y = data[:2]  # train_on_batch adds a (None) sample weight
        with tf.GradientTape() as tape:
            loss, xent, logits, side = self._forward(x, y, True)
            reg = self.net.losses
            if reg:
                loss = loss + self.wd_scale() * ops.cast(ops.sum(ops.stack(reg)), "float32")
            # Gradients are summed over replicas: scale each replica's mean loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        # after the forward pass (the gates' T of this step), before the step counter moves
        self._update_discarded_count()
        self._flag_nonfinite(loss)
        variables = self.net.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._update(loss, xent, y, logits, side)

    def test_step(self, data):
        x, y = data
        loss, xent, logits, side = self._forward(x, y, False)
        return self._update(loss, xent, y, logits, side)


def build_net(cfg, num_classes: int, image_shape: tuple) -> keras.Model:
    """The network a run config (RunConfig or flat dict) trains, as it stands before the
    first epoch: the gate kind's settings at the start of its schedules (ε), ghost BN over
    the gate group."""
    run = RunConfig.of(cfg)
    options = run.net_options(training=True)
    return build_model(run.net.arch, classes=num_classes, input_shape=tuple(image_shape), **options)


def build_plain_net(cfg, num_classes: int, image_shape: tuple) -> keras.Model:
    """The run's network without gates (kind "none"), layer names as `build_net`'s: the
    net a weights-only Keras file of this architecture loads into (pretrained.py)."""
    run = RunConfig.of(cfg)
    plain = dataclasses.replace(run, gate=GateSection(get_gate("none"), run.gate.settings))
    return build_net(plain, num_classes, image_shape)


def skip_setting(run: RunConfig):
    """The run's backward skip: True, or why it is off. Under XLA the compiler fuses the
    step differently around the skip's conditional, so the skip would change roundings
    (measured: another run from the same seed); it stays off there."""
    if not run.run.backward_skip:
        return "backward_skip=false"
    if run.run.xla:
        return "--xla: XLA would round the step differently with it"
    return True


def build_training_model(
    cfg,
    num_classes: int,
    image_shape: tuple,
    strategy=None,
    *,
    net_hook=None,
    model_class=TrainingModel,
    steps_per_execution: int = 1,
) -> TrainingModel:
    """The compiled training model of a run config (RunConfig or flat dict; optimizer
    built), under `strategy`'s scope: what `epsresnet train` runs and the benchmarks time.
    The benchmarks' hooks: `net_hook(net)` changes the network before it is wrapped (their
    monitor and BatchNorm variants), `model_class` a TrainingModel subclass, and Keras's
    `steps_per_execution`. The caller sets the seed and the precision policy first."""
    run = RunConfig.of(cfg)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        net = build_net(run, num_classes, image_shape)
        if net_hook is not None:
            net_hook(net)
        model = model_class(
            net,
            run.net.side_weight,
            run.net.wd_decay_every,
            run.net.wd_decay_factor,
            run.run.top5,
            skip_setting(run),
        )
        model.compile(
            optimizer=make_optimizer(run.schedule),
            jit_compile=bool(run.run.xla),
            steps_per_execution=int(steps_per_execution),
        )
        model.optimizer.build(net.trainable_variables)
    return model
