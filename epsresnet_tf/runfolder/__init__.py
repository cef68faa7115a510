"""The run folder: its layout, reading and writing it, and its checkpoints.

One module knows what `epsresnet train` writes and what `compress`, `ablate`, `evaluate`,
`report` and `sweep-eps` read back and add::

    runs/<name>/
      config.json          the resolved config (epsresnet_tf.config); a resume changes
                           only its config.FUTURE_ONLY keys (more epochs …)
      changes.jsonl        one row per resume that changed them: epoch, old and new values
      data.json            the dataset folder training read (not config: where the data
                           lies is not what the run computes); compress/evaluate reuse it
      history.jsonl        one JSON row per finished epoch
      tb/train/            TensorBoard events of training; tb/validation/ of evaluation
                           (a run each, as Keras writes them; earlier runs: tb/ alone)
      train.lock           while `train` runs: its flock, naming its pid and host
      ckpt/epoch-00005.npz checkpoints: every variable + the JSON state of the loop
      ckpt/epoch-00005.json  its manifest (size, sha256), written after it: valid once there
      ckpt/corrupt/        checkpoints that failed their manifest, moved aside
      model.keras          the final net (written when training ends)
      reduced/             `compress`: reduced.keras, saved_model/, certificate.json
                           (reduced.tflite with --tflite)
      ablation/            `ablate`: <order>.json
      report/              `report` of this run alone: tables.md and the figures

    RunFolder(root)            the paths above; open() (lock, sweep, --restart); config
                               check; save/verify/load/retention of checkpoints
    config_text(cfg) -> str    config.json's text (`train --print-config` prints it)
    read_run(run_dir) -> RunInfo   what compression, evaluation and reports need of a run
    read_init_weights(run, cfg, shapes)   the net weights `train --init-from` starts from
    read_history(run_dir) -> rows
    load_model(path) -> keras.Model
    find_run(model_path) -> the run folder a saved net belongs to, or None
    atomic_write_text/bytes(path, data), atomic_path(path): the one way a file is written
                               (temporary file beside it, fsync, umask's mode, rename);
                               a full disk, read-only folder or denied permission is one line

Every failure leaves the folder as it was before the write began, or with a leftover that
the next start recognises (an unfinished temporary file is swept, a checkpoint without its
manifest is skipped), so a run is never restarted or overwritten silently.

The package, one job a module (each name below is importable from the package itself)::

    names        the file and folder names above (the on-disk format)
    atomic       atomic_path / atomic_write_*, one-line disk errors, the temp-file sweep,
                 read_json
    lock         RunLock: the one writer's flock on train.lock
    checkpoints  Checkpoints: RunFolder's save/verify/load/retention of ckpt/
    layout       RunFolder (paths, open, config check, data.json, history, certificate,
                 ablations, model.keras), History, last_val_error, config_text
    run          read_run -> RunInfo, read_init_weights (NET_KEYS), run_data_dir,
                 read_history, load_model, find_run
"""

from epsresnet_tf.runfolder.atomic import (
    DISK_ERRORS,
    PathLike,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    disk_error,
    fsync_dir,
    read_json,
    sweep_temporary_files,
)
from epsresnet_tf.runfolder.checkpoints import Checkpoints
from epsresnet_tf.runfolder.layout import History, RunFolder, config_text, last_val_error
from epsresnet_tf.runfolder.lock import RunLock
from epsresnet_tf.runfolder.names import (
    ABLATION,
    CERTIFICATE,
    CHANGES,
    CHECKPOINTS,
    CONFIG,
    CORRUPT,
    DATA,
    HISTORY,
    LOCK,
    MODEL,
    REDUCED,
    REDUCED_MODEL,
    REDUCED_ONNX,
    REDUCED_RAW_MODEL,
    REDUCED_RAW_ONNX,
    REDUCED_RAW_TFLITE,
    REDUCED_TFLITE,
    REPORT,
    SAVED_MODEL,
    TB_RUNS,
    TENSORBOARD,
)
from epsresnet_tf.runfolder.run import (
    NET_KEYS,
    RunInfo,
    find_run,
    load_model,
    read_history,
    read_init_weights,
    read_run,
    run_data_dir,
)

__all__ = [
    "ABLATION",
    "CERTIFICATE",
    "CHANGES",
    "CHECKPOINTS",
    "CONFIG",
    "CORRUPT",
    "DATA",
    "DISK_ERRORS",
    "HISTORY",
    "LOCK",
    "MODEL",
    "NET_KEYS",
    "REDUCED",
    "REDUCED_MODEL",
    "REDUCED_ONNX",
    "REDUCED_RAW_MODEL",
    "REDUCED_RAW_ONNX",
    "REDUCED_RAW_TFLITE",
    "REDUCED_TFLITE",
    "REPORT",
    "SAVED_MODEL",
    "TB_RUNS",
    "TENSORBOARD",
    "Checkpoints",
    "History",
    "PathLike",
    "RunFolder",
    "RunInfo",
    "RunLock",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "config_text",
    "disk_error",
    "find_run",
    "fsync_dir",
    "last_val_error",
    "load_model",
    "read_history",
    "read_init_weights",
    "read_json",
    "read_run",
    "run_data_dir",
    "sweep_temporary_files",
]
