"""The ε-ResNet training loop: Keras `fit` with a training step of our own, a run folder,
atomic checkpoints and exact resume.

Why `fit` with an overridden `train_step` (and not a hand-written `strategy.run` loop):
`fit` gives the progress bars, callbacks and validation for free, and Keras 3's `fit` runs
under `MirroredStrategy` (one machine, several GPUs — every configuration of the paper).
The step is ours because the loss is not a Keras loss: cross-entropy + 0.1 × the side
head's cross-entropy + the weight decay times a factor that drops ×0.2 every 480,000 steps,
computed in the graph from the optimizer's step counter (docs/semantics.md §6). Keras 3's `fit` fails
under `MultiWorkerMirroredStrategy` (keras-team/keras#20585); with several machines
(`TF_CONFIG` set) the same `train_step` and callbacks are driven by a loop of our own under
`strategy.run` instead (`epsresnet_tf.train.multiworker`), and only the chief writes the
run folder.

Under `MirroredStrategy` each replica runs the step on its slice of the global batch, so
every ε-gate computes T on its own replica's batch, as the authors' towers did. The
gates' monitor variables are mean-aggregated: each step every replica's update of the
EMA of 1 − T is averaged, so a block's discarded value is the EMA of the replica-mean of
1 − T, and the discarded count is the sum of those over blocks.

The config is `epsresnet_tf.config`'s; the run folder (config.json, history.jsonl, tb/,
ckpt/, model.keras) and its checkpoints are `epsresnet_tf.runfolder`'s.
"""
import os

import numpy as np

from epsresnet_tf.config import OPTIMIZERS, global_batch_size, validate_config
from epsresnet_tf.errors import UserError
from epsresnet_tf.runfolder import RunFolder


# --- strategy and precision --------------------------------------------------------------

def make_strategy(gpus):
    """0: the default strategy (one device); N >= 1: MirroredStrategy over N GPUs. With
    TF_CONFIG set: MultiWorkerMirroredStrategy over each machine's first N GPUs (0: CPU)."""
    import tensorflow as tf
    if os.environ.get("TF_CONFIG"):
        from epsresnet_tf.train.multiworker import make_multi_worker_strategy
        return make_multi_worker_strategy(gpus)
    if gpus == 0:
        return tf.distribute.get_strategy()
    visible = tf.config.list_physical_devices("GPU")
    if gpus > len(visible):
        raise UserError(f"--gpus {gpus} asks for more GPUs than the {len(visible)} visible")
    return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])


def make_optimizer(cfg):
    """SGD with momentum 0.9 (Nesterov on ImageNet) in TF1's form, Keras's SGD, or Nadam for
    the gates paper's MNIST nets (docs/semantics.md §3, §6); the lr starts at the schedule's first value."""
    import keras
    from epsresnet_tf.train.optimizers import TF1Momentum
    name = cfg["optimizer"]
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    first_lr = cfg["lr_schedule"][0][1]
    if name == "nadam":
        return keras.optimizers.Nadam(first_lr)
    if name in ("momentum", "nesterov"):
        return TF1Momentum(first_lr, momentum=cfg["momentum"], nesterov=name == "nesterov")
    return keras.optimizers.SGD(first_lr, momentum=float(cfg["momentum"]),
                                nesterov=name == "keras-nesterov")


# --- the training model ------------------------------------------------------------------

def _training_model_class():
    import keras
    import tensorflow as tf
    from keras import ops

    class TrainingModel(keras.Model):
        """Wraps the network; owns the loss (docs/semantics.md §6) and the metrics. Not saved itself:
        the run folder keeps `net` (model.keras) and the variables (checkpoints)."""

        def __init__(self, net, side_weight=0.1, wd_every=0, wd_factor=0.2, top5=False):
            super().__init__()
            from epsresnet_tf.layers import gate_layers
            self.net = net
            self.gates = gate_layers(net)
            # The authors' `discarded_cnt` summary: ONE moving average of the per-step
            # count of discarded blocks, the statistic the adaptive reset reads
            # (docs/semantics.md §7); "mean" over replicas like the gates'.
            self.discarded_count = self.add_weight(
                name="discarded_count", shape=(), dtype="float32", trainable=False,
                initializer="zeros", aggregation="mean", autocast=False)
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
            from epsresnet_tf.layers import moving_average
            from epsresnet_tf.train.monitor import discarded_now
            if self.gates:
                now = ops.sum(ops.stack([discarded_now(g) for g in self.gates]))
                moving_average(self.discarded_count, now, self.optimizer.iterations)

        def epsilon_value(self):
            from epsresnet_tf.gates import read_hyper
            return read_hyper(self.gates, "epsilon")

        def wd_scale(self):
            """The staircase factor on the decay, from the optimizer's step, in the graph."""
            if not self.wd_every:
                return ops.cast(1.0, "float32")
            k = ops.floor(ops.cast(self.optimizer.iterations, "float32") / float(self.wd_every))
            return ops.power(ops.cast(self.wd_factor, "float32"), k)

        def _forward(self, x, y, training):
            out = self.net(x, training=training)
            side = None
            if isinstance(out, dict):
                logits, side = out["logits"], out["side_logits"]
            else:
                logits = out
            logits = ops.cast(logits, "float32")
            xent = ops.mean(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
            loss = xent
            if side is not None:
                side = ops.cast(side, "float32")
                loss = loss + self.side_weight * ops.mean(
                    keras.losses.sparse_categorical_crossentropy(y, side, from_logits=True))
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
            x, y = data
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
            variables = self.net.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply(grads, variables)
            return self._update(loss, xent, y, logits, side)

        def test_step(self, data):
            x, y = data
            loss, xent, logits, side = self._forward(x, y, False)
            return self._update(loss, xent, y, logits, side)

    return TrainingModel


# --- data --------------------------------------------------------------------------------

def epoch_steps(cfg, source, replicas):
    """Steps in one epoch as tensorpack counted them (docs/semantics.md §6): an
    epoch is `dataflow.size()` steps of the per-GPU dataflow and each step takes one batch
    per GPU, so with k GPUs and a per-replica batch an epoch is k passes over the data.
    A recipe's `steps_per_epoch` (ImageNet: 5,000) is taken as it is."""
    if cfg["steps_per_epoch"]:
        return cfg["steps_per_epoch"]
    if cfg["batch_per"] == "replica":
        examples = getattr(source, "shard_size", None)
        return examples // cfg["batch_size"] if examples else source.num_batches * replicas
    return source.num_batches


def epochs_dataset(source, start, end, steps, global_batch=None):
    """tf.data over epochs [start, end) of `steps` batches each, cut from one stream of
    passes over `source`: the data package's one path (data.pipeline.epochs_dataset)."""
    from epsresnet_tf.data.pipeline import epochs_dataset as dataset
    return dataset(source, start, end, steps, global_batch)


def default_sources(cfg, data_dir, global_batch):
    """(training, evaluation or None) pipelines of the config's dataset."""
    from epsresnet_tf.data.pipeline import make_sources
    return make_sources(cfg["dataset"], data_dir, global_batch, seed=cfg["seed"],
                        mean=cfg["mean"], workers=cfg["data_workers"],
                        evaluate=cfg["val_steps"] != 0,
                        imagenet_channel_order=cfg["imagenet_channel_order"],
                        imagenet_saturation=cfg["imagenet_saturation"])


# --- the run -----------------------------------------------------------------------------

def run_training(cfg, run_dir, data_dir="data", *, sources=None, strategy=None, verbose=1,
                 extra_callbacks=()):
    """Train (or resume) the run `cfg` in `run_dir`. Returns a summary dict with
    "status" ("done" or "nan"), "epochs", "history" rows and paths. `extra_callbacks`
    (Keras callbacks) run after the loop's own."""
    import keras
    import tensorflow as tf

    from epsresnet_tf.models import build_model
    from epsresnet_tf.models.registry import authors_block_count
    from epsresnet_tf.train import callbacks as C
    from epsresnet_tf.train import multiworker
    from epsresnet_tf.gates import get_gate
    from epsresnet_tf.train.schedules import AdaptiveResetSchedule, FixedSchedule, ScheduledSetter

    validate_config(cfg)
    gate_kind = get_gate(cfg["gate"])   # its net options, schedules (ε) and adaptive reset
    folder = RunFolder(run_dir)
    if strategy is None:
        strategy = make_strategy(cfg["gpus"])   # UserError before anything is written
    global_batch = global_batch_size(cfg, strategy.num_replicas_in_sync)
    if sources is None:
        sources = default_sources(cfg, data_dir, global_batch)   # missing data fails here
    train_src, val_src = sources
    multi = multiworker.is_multi_worker(strategy)
    run_root, ckpt_source = folder.root, folder
    if multi:   # only the chief writes the run folder; the others a temporary one
        folder, ckpt_source, resume = multiworker.worker_folders(folder, cfg, strategy)
    else:
        resume = folder.check_or_create(cfg)

    if cfg["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg["seed"])
    keras.mixed_precision.set_global_policy("mixed_float16" if cfg["mixed_precision"]
                                            else "float32")
    steps = epoch_steps(cfg, train_src, strategy.num_replicas_in_sync)

    with strategy.scope():
        options = dict(cfg["model_options"])
        if gate_kind is not None:
            options.update(gate_kind.net_options(cfg, training_start=True))
        if cfg["ghost_bn"] and cfg["gate_group"] is not None:
            options.update(bn_group=cfg["gate_group"])
        net = build_model(cfg["arch"], classes=train_src.num_classes,
                          input_shape=tuple(train_src.image_shape), gate=cfg["gate"],
                          side_head=cfg["side_head"], weight_decay=cfg["weight_decay"],
                          **options)
        model = _training_model_class()(net, cfg["side_weight"], cfg["wd_decay_every"],
                                        cfg["wd_decay_factor"], cfg["top5"])
        model.compile(optimizer=make_optimizer(cfg), jit_compile=bool(cfg["xla"]))
        model.optimizer.build(net.trainable_variables)

    if cfg["adaptive_schedule"] and gate_kind is not None and gate_kind.adaptive_reset:
        lr_sched = AdaptiveResetSchedule(cfg["lr_schedule"], cfg["adaptive_schedule"],
                                         cfg["reset_threshold"], cfg["reset_window"],
                                         cfg["reset_tolerance"])
    else:
        lr_sched = FixedSchedule(cfg["lr_schedule"])
    gate_schedules = gate_kind.schedules(cfg) if gate_kind is not None else {}

    def variables():
        return list(net.variables) + list(model.optimizer.variables) + model.monitor_variables

    state = C.RunState()
    start = 0
    if resume:
        loaded = ckpt_source.load_latest()
        if loaded is not None:
            arrays, saved = loaded
            vs = variables()
            if len(arrays) != len(vs):
                raise UserError(f"checkpoint in {folder.ckpt} does not match the model")
            for v, a in zip(vs, arrays):
                v.assign(a)
            lr_sched.set_state(saved["lr_schedule"])
            state.rows = saved["history"]
            start = saved["epoch"]
            print(f"resuming {run_root} after epoch {start}")
        # the history file is rewritten from the checkpoint: rows of a killed epoch go
        folder.write_history(state.rows)

    def save(epoch):
        st = {"epoch": epoch, "lr_schedule": lr_sched.get_state(), "history": state.rows}
        folder.save_checkpoint(epoch, [np.asarray(v.numpy()) for v in variables()], st)

    cbs = [
        C.ScheduleCallback(ScheduledSetter(lr_sched, "learning rate"), C.set_learning_rate,
                           lambda m: float(m.optimizer.learning_rate.numpy()), state),
        *(C.ScheduleCallback(ScheduledSetter(FixedSchedule(schedule), name),
                             lambda m, v, name=name: C.set_gate_hyper(m, name, v),
                             lambda m, name=name: C.gate_hyper(m, name) or 0.0, state)
          for name, schedule in gate_schedules.items()),
        C.MonitorCallback(state, authors_block_count(cfg["arch"])),
        C.HistoryCallback(folder.history, state),
        C.TensorBoardCallback(str(folder.tb), state, cfg["histogram_every"]),
        C.CheckpointCallback(save, state),
        *extra_callbacks,
    ]
    if multi:
        multiworker.check_same_start(strategy, start)
    epochs = cfg["epochs"]
    if start < epochs:
        train_ds = epochs_dataset(train_src, start, epochs, steps, global_batch)
        val_ds = val_steps = None
        if val_src is not None:
            val_steps = min(cfg["val_steps"] or val_src.num_batches, val_src.num_batches)
            val_ds = epochs_dataset(val_src, 0, 1, val_steps, None)
        if multi:   # Keras 3's fit fails under MultiWorkerMirroredStrategy
            multiworker.fit(model, strategy, train_ds, epochs=epochs, initial_epoch=start,
                            steps_per_epoch=steps, validation_data=val_ds,
                            validation_steps=val_steps, callbacks=cbs, verbose=verbose)
        else:
            model.fit(train_ds, epochs=epochs, initial_epoch=start, steps_per_epoch=steps,
                      validation_data=val_ds, validation_steps=val_steps, shuffle=False,
                      callbacks=cbs, verbose=verbose)
    if state.nan:
        ckpts = folder.checkpoints()
        kept = ckpts[-1].name if ckpts else "none"
        msg = f"stopped: {state.nan}; last good checkpoint kept: {kept}"
        print(msg)
        result = {"status": "nan", "message": msg, "history": state.rows,
                  "run_dir": str(run_root)}
    else:
        folder.save_model(net)
        result = {"status": "done", "epochs": len(state.rows), "history": state.rows,
                  "run_dir": str(run_root), "model": str(RunFolder(run_root).model)}
    if multi:
        multiworker.remove_worker_folder(folder, strategy)
    return result
