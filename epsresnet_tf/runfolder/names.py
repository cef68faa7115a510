"""The names inside a run folder: what `train` writes and the other commands read back
(the tree in epsresnet_tf.runfolder's docstring). They are the on-disk format: a run
folder of an older version must still resume, so a name here never changes."""

#: Names inside a run folder.
CONFIG = "config.json"
CHANGES = "changes.jsonl"
DATA = "data.json"
HISTORY = "history.jsonl"
TENSORBOARD = "tb"
TB_RUNS = ("train", "validation")  # TensorBoard runs inside tb/
CHECKPOINTS = "ckpt"
MODEL = "model.keras"
REDUCED = "reduced"
ABLATION = "ablation"
REPORT = "report"
#: Names inside reduced/ (what `compress` exports).
REDUCED_MODEL = "reduced.keras"
SAVED_MODEL = "saved_model"
REDUCED_TFLITE = "reduced.tflite"  # with `compress --tflite`
#: The same nets taking uint8 images as the dataset stores them (compress of a run folder).
REDUCED_RAW_MODEL = "reduced-raw.keras"
REDUCED_RAW_TFLITE = "reduced-raw.tflite"
REDUCED_ONNX = "reduced.onnx"  # with `compress --onnx`, as the TFLite files
REDUCED_RAW_ONNX = "reduced-raw.onnx"
CERTIFICATE = "certificate.json"
#: The writer's lock file (RunLock) and the folder invalid checkpoints are moved to.
LOCK = "train.lock"
CORRUPT = "corrupt"
