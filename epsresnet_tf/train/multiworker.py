"""Multi-worker training (`TF_CONFIG` set): a loop of our own under `strategy.run`.

Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585:
"PerReplica … unsupported type … to a Tensor"), so with several workers `run_training`
calls `fit` here instead of `model.fit`. It is a small stand-in for the part of `fit` the
run uses, not a copy of the training step:

* each step is `strategy.run(model.train_step, …)` inside a `tf.function` — the very
  `TrainingModel.train_step` that `fit` runs per replica (`_forward`, the loss with the
  side head and the decay staircase, loss scaled by 1/replicas, `optimizer.apply`, which
  all-reduces the gradients); validation is `strategy.run(model.test_step, …)`;
* the run's Keras callbacks (lr schedule with adaptive reset, ε schedule, monitor,
  history, TensorBoard, checkpoints) are called at the same points `fit` calls them, with
  the same logs (the metrics' results, read once per epoch from their all-reduced
  variables; validation ones prefixed `val_`), and `model.stop_training` ends the run;
* data: every worker reads the same global batches (the sources depend only on seed,
  epoch and index) and keeps its slice, split into per-replica batches in global replica
  order — replica r of the cluster gets rows [r·b, (r+1)·b) of each global batch, as
  replica r of `MirroredStrategy` does under `fit`.

Only the chief (task "chief", or worker 0 when there is none) writes the run folder; the
other workers write theirs to a temporary folder, removed at the end, as TensorFlow's
multi-worker guide recommends. Resuming reads the chief's checkpoints, so the run folder
must be on a file system every worker sees; the workers check that they resumed from the
same epoch and refuse to go on otherwise.
"""

import atexit
import shutil
import tempfile

from epsresnet_tf.errors import UserError


def is_multi_worker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def make_multi_worker_strategy(gpus):
    """MultiWorkerMirroredStrategy from TF_CONFIG over this machine's first `gpus` GPUs
    (0: its CPU). Must run before TensorFlow's runtime starts (program start-up)."""
    import tensorflow as tf

    visible = tf.config.list_physical_devices("GPU")
    if gpus > len(visible):
        raise UserError(f"--gpus {gpus} asks for more GPUs than the {len(visible)} visible")
    try:
        tf.config.set_visible_devices(visible[:gpus], "GPU")
    except RuntimeError as err:  # the runtime has started: too late to choose devices
        raise UserError(
            f"multi-worker strategy must be made before TensorFlow starts: {err}"
        ) from err
    impl = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=impl.AUTO if gpus else impl.RING
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except ValueError as err:  # malformed TF_CONFIG
        raise UserError(f"TF_CONFIG: {err}") from None


def is_chief(strategy):
    return bool(strategy.extended.should_checkpoint)


def worker_folders(folder, cfg, strategy):
    """(folder to write, folder to resume from, resume?) for this worker. The chief writes
    `folder`; the others check its config (read only) and write a temporary run folder."""
    if is_chief(strategy):
        return folder, folder, folder.check_or_create(cfg)
    if folder.config.exists():
        folder.check_config(cfg)  # the same refusal the chief makes, so no worker hangs
        resume = True
    else:
        resume = False  # a fresh run (the chief is creating it)
    own = type(folder)(tempfile.mkdtemp(prefix="epsresnet-worker-"))
    atexit.register(shutil.rmtree, own.root, ignore_errors=True)  # also if the run fails
    own.check_or_create(cfg)
    return own, folder, resume


def remove_worker_folder(folder, strategy):
    if not is_chief(strategy):
        shutil.rmtree(folder.root, ignore_errors=True)


def check_same_start(strategy, start):
    """All workers resumed after the same epoch, or a UserError on each of them."""
    import tensorflow as tf

    per_replica = strategy.run(lambda: tf.constant([start], tf.int64))
    starts = sorted(set(int(s) for s in strategy.gather(per_replica, axis=0).numpy()))
    if len(starts) > 1:
        raise UserError(
            f"the workers resume after different epochs {starts}: the run folder "
            f"must be on a file system every worker sees"
        )


def distribute(strategy, ds):
    """A tf.data dataset of global batches → a distributed dataset, replica r of the cluster
    getting rows [r·n/R, (r+1)·n/R) of each batch of n rows (R replicas in all)."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    def fn(ctx):
        workers, w = ctx.num_input_pipelines, ctx.input_pipeline_id
        local = replicas // workers

        def parts(x, y):
            n = tf.shape(y)[0]
            bounds = [n * (w * local + j) // replicas for j in range(local + 1)]
            return tf.data.Dataset.from_tensor_slices(tf.range(local)).map(
                lambda j: (
                    x[tf.gather(bounds, j) : tf.gather(bounds, j + 1)],
                    y[tf.gather(bounds, j) : tf.gather(bounds, j + 1)],
                )
            )

        return ds.flat_map(parts)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(fn, options)


def fit(
    model,
    strategy,
    train_ds,
    *,
    epochs,
    initial_epoch,
    steps_per_epoch,
    callbacks,
    validation_data=None,
    validation_steps=None,
    verbose=1,
):
    """What `model.fit(…)` does for `run_training`, under a MultiWorkerMirroredStrategy."""
    import tensorflow as tf

    @tf.function
    def train_step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    @tf.function
    def test_step(iterator):
        strategy.run(model.test_step, args=(next(iterator),))

    def results(prefix=""):
        return {prefix + m.name: float(m.result().numpy()) for m in model.metrics}

    for cb in callbacks:
        cb.set_model(model)
    model.stop_training = False
    talk = verbose and is_chief(strategy)
    train_it = iter(distribute(strategy, train_ds))
    for cb in callbacks:
        cb.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        for _ in range(steps_per_epoch):
            train_step(train_it)
        logs = results()
        if validation_data is not None:
            model.reset_metrics()
            val_it = iter(distribute(strategy, validation_data))
            for _ in range(validation_steps):
                test_step(val_it)
            logs.update(results("val_"))
        if talk:
            print(
                f"epoch {epoch + 1}/{epochs}: " + " ".join(f"{k} {v:.4f}" for k, v in logs.items()),
                flush=True,
            )
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end()
