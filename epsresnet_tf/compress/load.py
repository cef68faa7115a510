"""A run folder's side of compress (its layout: epsresnet_tf.runfolder): which state to
compress, its net (final or a checkpoint's), its moving averages, its data, and what
certificate.json records about it."""

import dataclasses

from epsresnet_tf.config import dtype_policy, keras_precision
from epsresnet_tf.errors import UserError
from epsresnet_tf.outputs import load_net
from epsresnet_tf.runfolder import read_history, run_data_dir


@dataclasses.dataclass(frozen=True)
class RunSelection:
    """Which state of a run is compressed, and on which of its data: the final net
    (`epoch` None) or the end of `epoch`; the EMA values from the net's gates ("model") or
    a history.jsonl row ("history", of `ema_epoch`, default: `epoch`, else the last);
    certified on `splits`, the first `max_batches` batches of each (None: all)."""

    epoch: int | None = None
    ema_from: str = "model"
    ema_epoch: int | None = None
    splits: tuple[str, ...] = ("train", "test")
    max_batches: int | None = None


def run_datasets(run, data_dir, splits=("train", "test"), max_batches=None, batch_size=None):
    """Evaluation-order batches (no augmentation) of the run's dataset, per split name
    ("train" and "test" map to the dataset's own split names); `data_dir` None: the folder
    the run trained with (commands.run_data_dir)."""
    from epsresnet_tf.data.pipeline import eval_batches

    data_dir = run_data_dir(data_dir, run.root)

    return {
        split: eval_batches(
            run.dataset,
            split,
            data_dir,
            batch_size or run.batch_size,
            seed=run.seed,
            mean=run.mean,
            max_batches=max_batches,
        )
        for split in splits
    }


def load_epoch(run, epoch):
    """(net, checkpoint state) at the end of a finished `epoch`: the run's net built from
    config.json as training built it, every variable (weights, BatchNorm statistics, ε,
    the gates' moving averages) from `ckpt/epoch-<epoch>.npz`. UserError naming the kept
    epochs and the setting to use when that checkpoint is gone."""
    from epsresnet_tf.models.registry import build_model  # the builders import Keras

    folder = run.folder
    path = folder.checkpoint_path(epoch)
    if not path.is_file():
        kept = folder.kept_epochs()
        raise UserError(
            f"no checkpoint of epoch {epoch} in {folder.ckpt} (kept: "
            f"{', '.join(map(str, kept)) or 'none'}); train with "
            f'"keep_checkpoints_at": [{epoch}] (or keep_checkpoints_every) in the '
            "config to keep it, or compress a kept epoch"
        )
    try:
        arrays, state = folder.load(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is unreadable ({err}): compress another kept epoch") from err
    cfg = run.config
    with keras_precision(dtype_policy(cfg)):  # the run's precision, as training set it
        net = build_model(run.arch, side_head=cfg.get("side_head", True), **run.build_options)
    variables = net.variables  # the checkpoint holds these first, then the optimizer's
    if len(arrays) < len(variables) or any(
        tuple(v.shape) != a.shape for v, a in zip(variables, arrays)
    ):
        raise UserError(
            f"{path} does not match the net config.json describes: was the run "
            "folder's config.json edited?"
        )
    for v, a in zip(variables, arrays):
        v.assign(a)
    if state.get("epoch") != epoch:
        raise UserError(f"{path} holds epoch {state.get('epoch')}, not {epoch}")
    return net, state


def load_weights(run, epoch, ema_epoch):
    """The net to compress: (model, checkpoint state or None, the EMA's epoch). The final
    model.keras, or with `epoch` its checkpoint (then the EMA's epoch must be the same)."""
    if epoch is None:
        return load_net(run.model_path), None, ema_epoch
    if ema_epoch is not None and ema_epoch != epoch:
        raise UserError(
            f"--ema-epoch {ema_epoch} differs from --epoch {epoch}: the moving "
            "averages would not be those of the compressed weights; drop "
            "--ema-epoch"
        )
    model, state = load_epoch(run, epoch)
    return model, state, epoch


def history_ema(run, ema_epoch):
    """The gates' moving averages in history.jsonl's row of `ema_epoch` (None: the last)."""
    rows = read_history(run.root)
    if not rows:
        raise UserError(f"{run.history_path} is missing or empty: use --ema-from model")
    pick = (
        rows[-1] if ema_epoch is None else next((r for r in rows if r["epoch"] == ema_epoch), None)
    )
    if pick is None:
        raise UserError(f"no history row for epoch {ema_epoch} (epochs 1–{len(rows)})")
    return pick["blocks"]


def run_extra(run, select, state):
    """What certificate.json records about the run and the weights it compressed (`select`:
    the state compressed, its ema_epoch resolved)."""
    epoch = select.epoch
    folder = run.folder
    weights = folder.model if epoch is None else folder.checkpoint_path(epoch)
    extra = {
        "run": str(run.root),
        "dataset": run.dataset,
        "ema_from": select.ema_from,
        "ema_epoch": select.ema_epoch,
        "epoch": epoch,
        "weights": weights.relative_to(folder.root).as_posix(),
    }
    if state is not None and state.get("history"):
        extra["step"] = state["history"][-1].get("step")
    return extra
