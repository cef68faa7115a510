"""The ε-ResNet training loop: Keras `fit` with a training step of our own, a run folder,
atomic checkpoints and exact resume.

Why `fit` with an overridden `train_step` (and not a hand-written `strategy.run` loop):
`fit` gives the callbacks and validation for free, and Keras 3's `fit` runs
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
import sys

from epsresnet_tf.config import (
    dtype_policy,
    global_batch_size,
    keras_precision,
    towers,
    validate_config,
)
from epsresnet_tf.errors import UserError
from epsresnet_tf.pretrained import keras_file_weights
from epsresnet_tf.runconfig import RunConfig
from epsresnet_tf.runfolder import RunFolder, read_init_weights
from epsresnet_tf.train import multiworker, stopping
from epsresnet_tf.train.multiworker import make_multi_worker_strategy
from epsresnet_tf.train.schedules import AdaptiveResetSchedule, FixedSchedule, ScheduledSetter

# --- strategy and precision --------------------------------------------------------------


def make_strategy(gpus, device="gpu"):
    """0: the default strategy (one device); N >= 1: MirroredStrategy over N GPUs. With
    TF_CONFIG set: MultiWorkerMirroredStrategy over each machine's first N GPUs (0: CPU).
    `device` "cpu" (`train --cpu-devices N`): MirroredStrategy over N logical CPU devices
    standing in for N GPUs, for checking a multi-device run where there are no GPUs."""
    import tensorflow as tf

    if device == "cpu":
        return _cpu_strategy(gpus)
    if os.environ.get("TF_CONFIG"):
        return make_multi_worker_strategy(gpus)
    if gpus == 0:
        return tf.distribute.get_strategy()
    visible = tf.config.list_physical_devices("GPU")
    if gpus > len(visible):
        raise UserError(f"--gpus {gpus} asks for more GPUs than the {len(visible)} visible")
    return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])


def _cpu_strategy(count):
    """N logical CPU devices and MirroredStrategy over them: each replica runs the step on
    its slice of the batch, so its ε-gates, gate groups and BatchNorm statistics are those
    of a GPU tower (the same towers as --gpus N); the devices share the CPU's cores."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        raise UserError("--cpu-devices is for one machine: unset TF_CONFIG, or use --gpus")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:  # TensorFlow has started: its devices can no longer change
        pass
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise UserError(
            f"--cpu-devices {count}: TensorFlow already runs on {len(logical)} CPU device(s) "
            "in this process; start a new process"
        )
    return tf.distribute.MirroredStrategy([d.name for d in logical[:count]])


# --- data --------------------------------------------------------------------------------


def epoch_steps(data, source, replicas):
    """Steps in one epoch as tensorpack counted them (docs/semantics.md §6): an
    epoch is `dataflow.size()` steps of the per-GPU dataflow and each step takes one batch
    per GPU, so with k GPUs and a per-replica batch an epoch is k passes over the data.
    A recipe's `steps_per_epoch` (ImageNet: 5,000) is taken as it is. `data`: the run's
    data section (runconfig.DataSection)."""
    if data.steps_per_epoch:
        return data.steps_per_epoch
    if data.batch_per == "replica":
        examples = getattr(source, "shard_size", None)
        return examples // data.batch_size if examples else source.num_batches * replicas
    return source.num_batches


def towers_line(cfg, replicas, steps, source):
    """What one step and one epoch are on several towers, in words: the towers (gate and
    BatchNorm groups) over the devices, and the epoch in steps and passes over the data
    (tensorpack's `dataflow.size()` steps of one batch per tower, docs/semantics.md §6)."""
    count, images = towers(cfg, replicas)
    where = f"{replicas} devices" if replicas > 1 else "one device"
    text = f"towers: {count} × {images} images per step on {where}, each with its own ε-gates"
    text += " and BatchNorm statistics" if cfg.get("ghost_bn", True) or count == replicas else ""
    examples = getattr(source, "shard_size", None)
    if examples:
        passes = steps * count * images / examples
        text += f"; an epoch is {steps} steps, {passes:.3g} passes over {examples} images"
    return text


def epochs_dataset(source, start, end, steps, global_batch=None):
    """tf.data over epochs [start, end) of `steps` batches each, cut from one stream of
    passes over `source`: the data package's one path (data.pipeline.epochs_dataset)."""
    from epsresnet_tf.data.pipeline import epochs_dataset as dataset

    return dataset(source, start, end, steps, global_batch)


def default_sources(run: RunConfig, data_dir, global_batch):
    """(training, evaluation or None) pipelines of the run's dataset."""
    from epsresnet_tf.data.pipeline import make_sources

    data = run.data
    return make_sources(
        data.dataset,
        data_dir,
        global_batch,
        seed=run.run.seed,
        mean=data.mean,
        workers=data.data_workers,
        evaluate=data.val_steps != 0,
        imagenet_channel_order=data.imagenet_channel_order,
        imagenet_saturation=data.imagenet_saturation,
    )


# --- the run -----------------------------------------------------------------------------


def run_training(
    cfg: dict,
    run_dir,
    data_dir="data",
    *,
    sources=None,
    strategy=None,
    verbose: int = 1,
    extra_callbacks=(),
    restart: bool = False,
) -> dict:
    """Train (or resume) the run `cfg` in `run_dir`. Returns a summary dict with
    "status" ("done", "nan" or "interrupted": SIGINT/SIGTERM, with its "exit_code"),
    "epochs", "history" rows and paths. `verbose`: 0 prints nothing but a resume's start
    line, 1 the console of `epsresnet_tf.train.progress` (its per-step bar on a terminal),
    2 one line per epoch. `extra_callbacks` (Keras callbacks) run after the loop's own. `restart` moves an existing run aside (`<run_dir>.old-<time>/`) and trains
    from the start."""
    # several machines: one worker leaving on its own would hang the others' collectives
    signals = dict(enabled=not os.environ.get("TF_CONFIG"), on_second=stopping.exit_now)
    with stopping.stop_on_signals(**signals) as stop:
        try:
            return _run(
                cfg, run_dir, data_dir, sources, strategy, verbose, extra_callbacks, stop, restart
            )
        except (stopping.Interrupted, KeyboardInterrupt):
            return _interrupted(stop, run_dir, verbose)


def _run(cfg, run_dir, data_dir, sources, strategy, verbose, extra, stop, restart):
    validate_config(cfg)  # before its precision is read
    with keras_precision(dtype_policy(cfg)):  # the layers built from here on take it
        return _run_in_precision(
            cfg, run_dir, data_dir, sources, strategy, verbose, extra, stop, restart
        )


def _run_in_precision(cfg, run_dir, data_dir, sources, strategy, verbose, extra, stop, restart):
    from epsresnet_tf.train.callbacks import StopCallback

    run = _TrainingRun(cfg, run_dir, data_dir, sources, strategy, restart)
    try:  # the run folder's lock is held until here, whatever happens
        run.restore()
        run.say_start(verbose)
        stop.epoch = run.start + 1
        stop.check()  # a signal during the set-up: nothing trained yet
        run.fit([*run.callbacks(extra, verbose), StopCallback(stop)])
        run.wait_for_writes()  # the last epoch's files and line before the final model
        stop.check()
        return run.finish()
    finally:  # no write outlives the run folder's lock
        unsaid = run.writer.close()  # on the way out of another error only (else raised above)
        run.owner.close()
        if run.console is not None and unsaid is None:  # the lines of the epochs saved
            run.console.print_saved()
        if unsaid is not None:
            print(f"also: {unsaid}", file=sys.stderr, flush=True)


def _interrupted(stop, run_dir, verbose) -> dict:
    """The one line, on stderr (the progress bar's line is ended first)."""
    from epsresnet_tf.train.progress import shows_bar

    if shows_bar(verbose):
        print(flush=True)
    print(stop.message(), file=sys.stderr, flush=True)
    stop.said = True
    return {
        "status": "interrupted",
        "exit_code": stop.exit_code,
        "message": stop.message(),
        "run_dir": str(run_dir),
        "history": [],
    }


class _TrainingRun:
    """One `run_training` call: the run folder, data, model and schedules it sets up, then
    resume, fit and the final model, each a method."""

    def __init__(self, cfg, run_dir, data_dir, sources, strategy, restart=False):
        import keras
        import tensorflow as tf

        validate_config(cfg)
        self.cfg = cfg  # the flat config: config.json's content
        self.run = RunConfig.from_dict(cfg)  # the same by section, the gate kind resolved
        self.folder = RunFolder(run_dir)
        self.strategy = strategy or make_strategy(self.run.run.gpus)  # UserError before writing
        replicas = self.strategy.num_replicas_in_sync
        self.global_batch = global_batch_size(cfg, replicas)
        self.data_dir = data_dir if sources is None else None  # recorded in the run folder
        if sources is None:
            sources = default_sources(self.run, data_dir, self.global_batch)  # missing data fails
        self.train_src, self.val_src = sources
        self.multi = multiworker.is_multi_worker(self.strategy)
        self.run_root, self.ckpt_source, self.owner = self.folder.root, self.folder, self.folder
        if self.run.run.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(self.run.run.seed)
        self.steps = epoch_steps(self.run.data, self.train_src, replicas)
        from epsresnet_tf.train.model import build_training_model

        self.model = build_training_model(
            self.run, self.train_src.num_classes, self.train_src.image_shape, self.strategy
        )
        self.lr_sched = lr_schedule(self.run)
        from epsresnet_tf.train.callbacks import RunState

        self.state = RunState(statistic=self.run.schedule.reset_statistic)
        self.start = 0
        from epsresnet_tf.train.writer import EpochWriter

        self.writer = EpochWriter()  # the epoch's file writes, off the training thread
        self.console = None  # the ProgressCallback, whose lines wait for their checkpoint
        self.reader = None  # the checkpoint's variables, read in one graph call
        fresh = restart or not self.folder.config.exists()
        self.init_note = None  # where the starting weights came from, for the console
        self.init_weights = self._init_weights() if fresh and self._init_source() else None
        self._open_folder(restart)  # last: whatever failed above has written nothing

    def _open_folder(self, restart):
        """Lock the run folder (held until run_training ends: one writer), then check or
        create it; only the chief writes it, the other workers a temporary one."""
        if not self.multi or multiworker.is_chief(self.strategy):
            self.owner.open(restart)
        try:
            if self.multi:
                self.folder, self.ckpt_source, self.resume = multiworker.worker_folders(
                    self.folder, self.cfg, self.strategy
                )
            else:
                self.resume = self.folder.check_or_create(self.cfg)
            if self.data_dir is not None:
                self.folder.record_data_dir(self.data_dir)
        except BaseException:
            self.owner.close()
            raise

    def is_chief(self):
        """Whether this process speaks for the run (several machines: the chief only)."""
        return not self.multi or multiworker.is_chief(self.strategy)

    def variables(self):
        """Everything a checkpoint holds, in a fixed order."""
        m = self.model
        return list(m.net.variables) + list(m.optimizer.variables) + m.monitor_variables

    def _init_source(self):
        """The run folder (--init-from) or Keras file (--init-from-keras) a new run starts
        from; None: fresh weights."""
        return self.run.run.init_from or self.run.run.weights

    def _init_weights(self):
        """The net weights a new run starts from: the newest checkpoint of --init-from's
        run (runfolder.read_init_weights), or --init-from-keras's file (pretrained.py)."""
        if self.run.run.init_from:
            shapes = [tuple(v.shape) for v in self.model.net.variables]
            self.init_note = f"the weights of {self.run.run.init_from}"
            return read_init_weights(self.run.run.init_from, self.cfg, shapes)
        from epsresnet_tf.train.model import build_plain_net

        shape = self.train_src.image_shape
        classes = self.train_src.num_classes
        weights, note = keras_file_weights(
            self.run.run.weights,
            self.model.net,
            lambda: build_plain_net(self.run, classes, shape),
        )
        self.init_note = note
        return weights

    def restore(self):
        """Resume from the newest checkpoint; the history file is rewritten from it (rows
        of a killed epoch go). Without one, a run with init_from starts from those weights."""
        loaded = self.ckpt_source.load_latest() if self.resume else None
        if loaded is None and self._init_source():
            weights = self.init_weights or self._init_weights()
            for v, a in zip(self.model.net.variables, weights):
                v.assign(a)
            print(f"{self.run_root}: starting from {self.init_note}")
        if loaded is not None:
            arrays, saved = loaded
            vs = self.variables()
            if len(arrays) != len(vs):
                raise UserError(f"checkpoint in {self.folder.ckpt} does not match the model")
            for v, a in zip(vs, arrays):
                v.assign(a)
            self.lr_sched.set_state(saved["lr_schedule"])
            self.state.rows = saved["history"]
            self.start = saved["epoch"]
        if self.resume:
            self.folder.write_history(self.state.rows)

    def say_start(self, verbose):
        """The run folder and where it starts, from the chief only; a resume is said even at
        verbose 0 (it decides what the run computes)."""
        from epsresnet_tf.train.progress import start_line

        if self.is_chief() and (verbose or self.start):
            print(start_line(self.run_root, self.start, self.run.schedule.epochs), flush=True)
        replicas = self.strategy.num_replicas_in_sync
        if self.is_chief() and verbose and (replicas > 1 or towers(self.cfg, replicas)[0] > 1):
            print(towers_line(self.cfg, replicas, self.steps, self.train_src), flush=True)
        note = self.model.backward_skip_note()
        if self.is_chief() and verbose and note:
            print(note, flush=True)

    def save(self, epoch):
        """Copy the variables and the loop's state now; write them on the writer thread."""
        st = {
            "epoch": epoch,
            "lr_schedule": self.lr_sched.get_state(),
            "history": list(self.state.rows),
        }
        from epsresnet_tf.train.monitor import VariableReader

        if self.reader is None:  # the same variables every epoch, once built
            self.reader = VariableReader(self.variables())
        arrays = self.reader()
        self.writer.submit("checkpoint", self.folder.save_checkpoint, epoch, arrays, st)

    def wait_for_writes(self):
        """Every epoch's files are on disk and its console line printed; a failed write
        raises here."""
        self.writer.wait()
        if self.console is not None:
            self.console.print_saved(wait=True)

    def callbacks(self, extra=(), verbose=0):
        """The loop's callbacks in order, `extra` after them; the console's (`verbose` 1 or
        2, the chief only) after the checkpoint, so an epoch's line means it is saved."""
        from epsresnet_tf.models.registry import authors_block_count
        from epsresnet_tf.train import callbacks as C
        from epsresnet_tf.train.dashboard import TensorBoardCallback
        from epsresnet_tf.train.progress import ProgressCallback

        cfg, state = self.cfg, self.state
        epochs = self.run.schedule.epochs
        gate_schedules = self.run.gate.kind.schedules(self.run.gate.settings)  # ε
        if verbose and self.is_chief():
            self.console = ProgressCallback(
                state,
                epochs,
                self.steps,
                self.lr_sched,
                verbose,
                self.writer.barrier,
                self.model.hyper_labels,
            )
        return [
            C.ScheduleCallback(
                ScheduledSetter(self.lr_sched, "learning rate"),
                C.set_learning_rate,
                lambda m: float(m.optimizer.learning_rate.numpy()),
                state,
            ),
            *(
                C.ScheduleCallback(
                    ScheduledSetter(FixedSchedule(schedule), name),
                    lambda m, v, name=name: C.set_gate_hyper(m, name, v),
                    lambda m, name=name: C.gate_hyper(m, name) or 0.0,
                    state,
                )
                for name, schedule in gate_schedules.items()
            ),
            self.writer.hold_callback(),  # no job starts while the epoch's end copies
            C.MonitorCallback(state, authors_block_count(self.run.net.arch)),
            C.HistoryCallback(self.folder.append_history, state, self.writer),
            C.CheckpointCallback(self.save, state),
            TensorBoardCallback(
                self.folder.tb_train,
                self.folder.tb_validation,
                state,
                cfg,
                self.lr_sched,
                self.writer,
            ),
            self.writer.release_callback(),  # the epoch's jobs start once its copies are made
            *([self.console] if self.console is not None else []),
            *extra,
        ]

    def fit(self, cbs):

        if self.multi:
            multiworker.check_same_start(self.strategy, self.start)
        epochs = self.run.schedule.epochs
        if self.start >= epochs:
            return
        train_ds = epochs_dataset(self.train_src, self.start, epochs, self.steps, self.global_batch)
        val_ds = val_steps = None
        if self.val_src is not None:
            val_steps = min(
                self.run.data.val_steps or self.val_src.num_batches, self.val_src.num_batches
            )
            val_ds = epochs_dataset(self.val_src, 0, 1, val_steps, None)
        common = dict(
            epochs=epochs,
            initial_epoch=self.start,
            steps_per_epoch=self.steps,
            validation_data=val_ds,
            validation_steps=val_steps,
            callbacks=cbs,
            verbose=0,  # the console is ProgressCallback's
        )
        if self.multi:  # Keras 3's fit fails under MultiWorkerMirroredStrategy
            multiworker.fit(self.model, self.strategy, train_ds, **common)
        else:
            self.model.fit(train_ds, shuffle=False, **common)

    def finish(self):

        rows, root = self.state.rows, str(self.run_root)
        if self.state.nan:
            ckpts = self.folder.checkpoints()
            kept = ckpts[-1].name if ckpts else "none (the first epoch went non-finite)"
            msg = f"stopped: {self.state.nan}; last good checkpoint kept: {kept}"
            print(msg)
            result = {"status": "nan", "message": msg, "history": rows, "run_dir": root}
        else:
            self.folder.save_model(self.model.net)
            result = {
                "status": "done",
                "epochs": len(rows),
                "history": rows,
                "run_dir": root,
                "model": str(RunFolder(self.run_root).model),
            }
        if self.multi:
            multiworker.remove_worker_folder(self.folder, self.strategy)
        return result


def lr_schedule(cfg):
    """The lr's schedule object of a run config (RunConfig or flat dict): the adaptive
    reset (docs/semantics.md §7) where it has an adaptive schedule and the gate kind
    resets, else the fixed one."""
    run = RunConfig.of(cfg)
    sched = run.schedule
    if sched.adaptive_schedule and run.gate.kind.adaptive_reset:
        return AdaptiveResetSchedule(
            sched.lr_schedule,
            sched.adaptive_schedule,
            sched.reset_threshold,
            sched.reset_window,
            sched.reset_tolerance,
        )
    return FixedSchedule(sched.lr_schedule)
