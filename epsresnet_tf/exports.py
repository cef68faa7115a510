"""Exports anyone can load: the reduced net in Keras's own layers, its SavedModel and TFLite.

    standard_net(net, dtype=None) -> (keras.Model, [custom layer classes left])
        the same function in standard Keras layers and ops only, so `keras.models.load_model`
        reads the `.keras` file in a Python that never imports epsresnet_tf
    custom_layers(net) -> [class names]: layer classes Keras alone cannot load
    write_tflite(net, path, saved_model=None) -> bytes written
    check_tflite(path, net, images) -> agreement of the TFLite interpreter with `net`
    raw_image_net(net, dataset, mean, channel_order) -> `net` taking the stored uint8 images
    export_saved_model(net, path, raw_net=None): `serve` (normalised), `serving_default`
    write_onnx(saved_model, signature, path) -> bytes written (tf2onnx, the `onnx` extra)
    check_onnx(path, net, images) -> agreement of onnxruntime with `net`

What changes (inference only; each replacement computes the same numbers, bit for bit):
  FusedBatchNormalization -> BatchNormalization: the fused kernel and the ghost groups are
      training-time paths; inference is Keras's own BatchNormalization call (same epsilon,
      momentum, gamma, beta and moving statistics).
  PoolPadShortcut -> AveragePooling2D, then the channel zero-pad as Reshape(+1 axis) ->
      ZeroPadding3D -> Reshape: pure data movement, exact (a 1x1 conv with 0/1 weights
      would round under TF32 on GPUs).
  ResidualGate (a kept k-gate) -> Rescaling(g(k)) + Add: g(k) = relu(k) is a constant at
      inference, and Rescaling multiplies by it as the gate did.
  SigmoidShortcutGate -> Conv2D(sigmoid) + Rescaling(-1, offset 1) + Multiply + Add.
  EpsilonGate (kept: `--gates keep`, or "auto" where a kept gate was not open on every
      certified batch) -> Keras ops (max, min, relu, multiply: nodes Keras serialises in a
      functional graph, no Lambda): T still decides from each batch (batch scope), image
      (sample scope) or group of images (`gate_group`), as the gated net does.
  A shared stage kernel (ShaResNet) stays one Conv2D called by several units: a standard
      layer, loaded as such, and the export keeps ShaResNet's parameter saving (duplicating
      it per unit would only be needed to fold unit-wise factors, which the Rescaling of a
      kept k-gate makes unnecessary).
A layer this module does not know (a gate kind registered from outside the package) stays
as it is; `custom_layers` names it and certificate.json records that the `.keras` then
needs the code that registered it.
"""

import importlib.util
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from epsresnet_tf.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from epsresnet_tf.errors import UserError
from epsresnet_tf.heldstderr import held_stderr, tensorflow_shows_info

#: Where a layer class must come from for Keras alone to deserialise it.
KERAS_MODULES = ("keras.",)


def custom_layers(net: Any) -> list[str]:
    """Sorted class names of `net`'s layers that plain Keras cannot deserialise."""
    return sorted(
        {type(l).__name__ for l in net.layers if not type(l).__module__.startswith(KERAS_MODULES)}
    )


def _replaced():
    from epsresnet_tf import layers as L

    return (L.PoolPadShortcut, L.ResidualGate, L.SigmoidShortcutGate)


def _is_eps(layer):
    from epsresnet_tf import layers as L

    return isinstance(layer, L.EpsilonGate)


def standard_net(
    net: Any, dtype: str | None = None, decisions: dict | None = None
) -> tuple[Any, list[str]]:
    """`net` rebuilt in Keras's own layers (module docstring), weights copied: (the
    standard net, the custom layer classes that had to stay). `dtype`: a dtype policy for
    every layer (e.g. "float32" for TFLite, which has no float16 kernels) instead of each
    layer's own. `decisions`: {ε-gate layer name: T (a number, decided for deployment:
    compress/deploy.py) or "sample" (T per image)}; the other ε-gates as they were."""
    import keras

    from epsresnet_tf import layers as L

    def clone(layer):
        if isinstance(layer, _replaced()) or _is_eps(layer):
            return layer  # replaced by standard layers where it is called (`call`)
        config = layer.get_config()
        if dtype is not None:
            config["dtype"] = dtype
        if isinstance(layer, L.FusedBatchNormalization):
            config.pop("group_size", None)
            return keras.layers.BatchNormalization.from_config(config)
        return type(layer).from_config(config)

    def call(layer, *args, **kwargs):
        policy = keras.dtype_policies.get(dtype) if dtype else layer.dtype_policy
        if isinstance(layer, L.PoolPadShortcut):
            return _pool_pad(layer, policy, args[0])
        if isinstance(layer, L.ResidualGate):
            return _scaled_merge(layer, policy, *args[0])
        if isinstance(layer, L.SigmoidShortcutGate):
            return _sigmoid_gate(layer, policy, *args[0])
        if _is_eps(layer):
            return _eps_gate(layer, args[0], (decisions or {}).get(layer.name))
        return layer(*args, **kwargs)

    out = keras.models.clone_model(net, clone_function=clone, call_function=call)
    source = {l.name: l for l in net.layers}
    for layer in out.layers:
        if layer.weights and layer.name in source:
            layer.set_weights(source[layer.name].get_weights())
    return out, custom_layers(out)


def raw_image_net(net: Any, dataset: Any, mean: Any = None, channel_order: str = "rgb") -> Any:
    """`net` behind its dataset's preprocessing in Keras layers (`datasets.Dataset`: the
    values it stores, then `normalise`): uint8 images as the dataset stores them in, the
    same logits out. Each step is the training pipeline's arithmetic: a value scale
    (digits, rint(x · 255/16)), then `Normalization` layers, whose (x − mean) / sqrt(var)
    with var = 128² or 255² is the pipeline's division exactly; ImageNet's std goes
    through its square root (a rounding off the pipeline's, within an ulp)."""
    import keras
    from keras import ops

    shape = tuple(net.inputs[0].shape[1:])
    raw = keras.Input(shape, dtype="uint8", name="raw_image")
    x = ops.cast(raw, "float32")
    if dataset.stored_levels != 255:  # to the reader's uint8 0–255
        x = ops.round(ops.multiply(x, 255.0 / dataset.stored_levels))
    f32 = dict(dtype="float32")
    if dataset.normalisation == "mean-image/128":
        x = keras.layers.Normalization(
            axis=(1, 2, 3), mean=np.asarray(mean), variance=np.full(shape, 128.0**2), **f32
        )(x)
    else:
        x = keras.layers.Normalization(axis=None, mean=0.0, variance=255.0**2, **f32)(x)
    if dataset.normalisation == "imagenet-mean-std":
        if channel_order == "authors-bgr":
            x = ops.flip(x, axis=-1)  # the authors' BGR image (datasets.normalise)
        x = keras.layers.Normalization(mean=IMAGENET_MEAN, variance=IMAGENET_STD**2, **f32)(x)
    return keras.Model(raw, net(x), name=f"{net.name}_raw")


def export_saved_model(net: Any, path: "str | Path", raw_net: Any = None) -> None:
    """`net` as a SavedModel: endpoint `serve` takes normalised float images; with
    `raw_net` (`raw_image_net`), `serving_default` (TF Serving's) takes uint8 images as the
    dataset stores them, else it is `serve`."""
    if raw_net is None:
        net.export(str(path), verbose=False)
        return
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(raw_net)  # the net's variables are the raw net's
    spec = (None, *net.inputs[0].shape[1:])
    archive.add_endpoint(
        "serve", lambda x: net(x, training=False), [tf.TensorSpec(spec, net.inputs[0].dtype)]
    )
    archive.add_endpoint(
        "serving_default", lambda x: raw_net(x, training=False), [tf.TensorSpec(spec, tf.uint8)]
    )
    archive.write_out(str(path), verbose=False)


def _pool_pad(layer, policy, x):
    """Option A in standard layers: the average pool, then the zero channels (both sides, as
    `PoolPadShortcut`) padded by ZeroPadding3D on a trailing unit axis. The last of these
    layers keeps the shortcut's name."""
    import keras

    kw = dict(dtype=policy)
    shape = list(layer.compute_output_shape(x.shape)[1:])
    axis = 0 if layer.data_format == "channels_first" else 2  # among the 3 non-batch axes
    missing = layer.out_channels - x.shape[1:][axis]
    steps = []
    if layer.stride > 1:
        steps.append(
            lambda name: keras.layers.AveragePooling2D(
                layer.stride, layer.stride, "valid", layer.data_format, name=name, **kw
            )
        )
    if missing:
        pad = [(0, 0)] * 3
        pad[axis] = (missing // 2, missing - missing // 2)
        unpadded = list(shape)
        unpadded[axis] -= missing
        steps += [
            lambda name: keras.layers.Reshape((*unpadded, 1), name=name, **kw),
            lambda name: keras.layers.ZeroPadding3D(tuple(pad), "channels_last", name=name, **kw),
            lambda name: keras.layers.Reshape(tuple(shape), name=name, **kw),
        ]
    for i, make in enumerate(steps):
        x = make(layer.name if i == len(steps) - 1 else f"{layer.name}_{i}")(x)
    return x


def _factor(value, policy):
    """A Python float equal to `value` rounded to the compute dtype, so Rescaling
    multiplies by the number the gate multiplied by."""
    return float(np.asarray(value, dtype=policy.compute_dtype))


def _scaled_merge(layer, policy, residual, shortcut):
    """A kept k-gate: g(k) F + x (mode "residual") or g(k) f + (1 - g(k)) x ("plain"), g(k)
    a constant once trained. (1 - g) is taken in the compute dtype, as the layer does."""
    import keras

    kw = dict(dtype=policy)
    g = np.asarray(max(float(np.asarray(layer.k)), 0.0), dtype=policy.compute_dtype)
    f = keras.layers.Rescaling(_factor(g, policy), name=layer.name + "_scale", **kw)(residual)
    if layer.mode == "plain":
        carry = _factor(np.asarray(1, g.dtype) - g, policy)
        shortcut = keras.layers.Rescaling(carry, name=layer.name + "_carry", **kw)(shortcut)
    return keras.layers.Add(name=layer.name, **kw)([f, shortcut])


def _sigmoid_gate(layer, policy, residual, shortcut):
    """He et al.'s gate g = sigmoid(conv1x1(x) + b): g F + (1 - g) x ("exclusive") or
    F + (1 - g) x ("shortcut_only"); 1 - g as -g + 1 (Rescaling), the same rounding."""
    import keras

    kw = dict(dtype=policy)
    conv = keras.layers.Conv2D.from_config(
        dict(layer.gate_conv.get_config(), name=layer.name + "_conv", **kw)
    )
    g = conv(shortcut)
    conv.set_weights(layer.gate_conv.get_weights())
    carry = keras.layers.Rescaling(-1.0, offset=1.0, name=layer.name + "_carry", **kw)(g)
    kept = keras.layers.Multiply(name=layer.name + "_shortcut", **kw)([carry, shortcut])
    if layer.mode == "exclusive":
        residual = keras.layers.Multiply(name=layer.name + "_residual", **kw)([g, residual])
    return keras.layers.Add(name=layer.name, **kw)([residual, kept])


def _eps_gate(layer, residual, decided=None):
    """A kept ε-gate, S(F) = T·F (docs/semantics.md §1), in Keras ops (serialised by Keras
    as nodes of the functional graph, no custom objects): T from max |F| over the batch
    (batch scope), each image (sample scope, or `decided` "sample") or each group of
    `group_size` consecutive images (`_group_peaks`), ε and L as float32 constants, the
    same arithmetic in the same order as `EpsilonGate.threshold`; T = 1 multiplies exactly.
    A number `decided` is T itself, fixed for deployment: 1 passes F on, others scale it."""
    from keras import ops

    if decided is not None and decided != "sample":
        return residual if decided == 1.0 else ops.multiply(residual, float(decided))
    f = ops.cast(residual, "float32")
    per_image = decided == "sample" or layer.scope == "sample"
    grouped = layer.grouped and not per_image
    axes = tuple(range(1, f.ndim)) if per_image or grouped else None
    keep = axes is not None
    peak = ops.maximum(
        ops.max(f, axis=axes, keepdims=keep), ops.negative(ops.min(f, axis=axes, keepdims=keep))
    )
    if grouped:
        peak, spread = _group_peaks(peak, layer.group_size)
    epsilon = float(np.float32(np.asarray(layer.epsilon)))  # float32 values, as Python floats
    sharpness = float(np.float32(layer.sharpness))
    s = ops.relu(ops.subtract(peak, epsilon))
    t = ops.relu(
        ops.subtract(
            1.0, ops.multiply(sharpness, ops.relu(ops.subtract(1.0, ops.multiply(sharpness, s))))
        )
    )
    if grouped:
        t = spread(t)
    return ops.multiply(ops.cast(t, residual.dtype), residual)


def _group_peaks(per_image, group_size):
    """(max over each group of `group_size` consecutive images of the per-image peaks
    (N, 1, …), a function giving each image its group's value back). Group ids are counted
    within the graph (a cumulative sum of ones), so a partial last group needs no batch size
    known when the graph is built; the max of a group is the layer's (zero padding cannot
    raise a max of values >= 0)."""
    from keras import ops

    flat = ops.reshape(per_image, (-1,))
    ids = ops.floor_divide(ops.cumsum(ops.ones_like(flat, dtype="int32")) - 1, group_size)
    peaks = ops.segment_max(flat, ids)  # unsorted: a TFLite builtin, the sorted one is not

    def spread(per_group):
        return ops.reshape(ops.take(per_group, ids), (-1,) + (1,) * (per_image.ndim - 1))

    return peaks, spread


# --- TFLite ----------------------------------------------------------------------------


def write_tflite(net: Any, path: "str | Path", saved_model: "str | Path | None" = None) -> int:
    """Convert the standard-layer `net` to a float32 TFLite flatbuffer at `path` through a
    SavedModel (`saved_model`, that of `net`, is reused when `net` computes in float32: a
    mixed-precision net is converted from a float32 copy, TFLite having no float16
    kernels); the bytes written. UserError (one line) when the converter refuses the net."""
    import tensorflow as tf

    float32 = all(l.compute_dtype == "float32" for l in net.layers if l.weights)
    with tempfile.TemporaryDirectory() as tmp:
        if saved_model is None or not float32:
            net = net if float32 else standard_net(net, dtype="float32")[0]
            saved_model = Path(tmp) / "float32"
            net.export(str(saved_model), verbose=False)
        try:
            flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
        except Exception as err:  # the converter's own error class is not public API
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise UserError(
                f"TFLite conversion failed ({first}); compress without --tflite"
            ) from err
    Path(path).write_bytes(flatbuffer)
    return len(flatbuffer)


def _interpreter(path):
    """A TFLite interpreter, its tensors allocated: LiteRT's where installed, else
    TensorFlow's (deprecated in favour of LiteRT, still shipped; its deprecation warning is
    silenced here). TFLite's C++ logger ignores TF_CPP_MIN_LOG_LEVEL, so its INFO lines
    ("Created TensorFlow Lite XNNPACK delegate") are held back here where that says so."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    show_info = tensorflow_shows_info()
    with (
        warnings.catch_warnings(),
        held_stderr(lambda line: show_info or not line.startswith("INFO: ")),
    ):
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    return interpreter


def tflite_logits(interpreter, images: np.ndarray) -> np.ndarray:
    """The flatbuffer's logits for a batch (the input resized to the batch's shape)."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if tuple(inp["shape"]) != images.shape:
        interpreter.resize_tensor_input(inp["index"], images.shape)
        interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images.astype(inp["dtype"]))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(out["index"]), np.float32)


def check_tflite(path: "str | Path", net: Any, images: Any) -> dict[str, Any]:
    """Run the TFLite flatbuffer at `path` and `net` (inference mode, on the CPU) on every
    batch of `images`: top-1 agreement and max |logit diff|; "passed" when every top-1 agrees
    (float kernels round differently, so logits agree to about 1e-6, not bit for bit)."""
    import tensorflow as tf

    interpreter = _interpreter(path)
    predict = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
    worst, same, total = 0.0, 0, 0
    with tf.device("/CPU:0"):
        for batch in images:
            x = np.asarray(batch)  # float32 images, or uint8 for a raw-image net
            a = np.asarray(tf.cast(predict(tf.constant(x)), tf.float32))
            b = tflite_logits(interpreter, x)
            if a.size:
                worst = max(worst, float(np.max(np.abs(a - b))))
            same += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            total += len(a)
    return {
        "images": total,
        "same_top1": same,
        "max_abs_logit_diff": worst,
        "passed": same == total,
    }


# --- ONNX --------------------------------------------------------------------------------

#: The ONNX opset written: onnxruntime 1.20 and later run it.
ONNX_OPSET = 17
_ONNX_MISSING = (
    "compress --onnx needs tf2onnx and onnxruntime: pip install 'epsresnet_tf[onnx]' "
    "(make install has them)"
)


def write_onnx(saved_model: "str | Path", signature: str, path: "str | Path") -> int:
    """Convert a SavedModel's `signature` to ONNX at `path` with tf2onnx; the bytes written.
    tf2onnx runs as its own command (its documented interface: `python -m tf2onnx.convert`;
    converting a Keras 3 function in this process leaves its constants as graph inputs),
    its log kept back; UserError (one line) when it is missing or refuses the net."""
    if importlib.util.find_spec("tf2onnx") is None:
        raise UserError(_ONNX_MISSING)
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model)]
    command += ["--signature_def", signature, "--opset", str(ONNX_OPSET), "--output", str(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not Path(path).is_file():
        errors = [l for l in done.stderr.splitlines() if "Error" in l] or ["no output"]
        raise UserError(
            f"ONNX conversion failed ({errors[-1].strip()[:160]}); compress without --onnx"
        )
    return Path(path).stat().st_size


def onnx_session(path: "str | Path"):
    """An onnxruntime session on the CPU; UserError (one line) when onnxruntime is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(_ONNX_MISSING) from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx(path: "str | Path", net: Any, images: Any) -> dict[str, Any]:
    """Run the ONNX file at `path` (onnxruntime) and `net` on every batch of `images`: top-1
    agreement and max |logit diff|, "passed" when every top-1 agrees, as check_tflite."""
    import tensorflow as tf

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    predict = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
    worst, same, total = 0.0, 0, 0
    with tf.device("/CPU:0"):
        for batch in images:
            x = np.asarray(batch)
            a = np.asarray(tf.cast(predict(tf.constant(x)), tf.float32))
            b = np.asarray(session.run(None, {name: x})[0], np.float32)
            if a.size:
                worst = max(worst, float(np.max(np.abs(a - b))))
            same += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            total += len(a)
    return {
        "images": total,
        "same_top1": same,
        "max_abs_logit_diff": worst,
        "passed": same == total,
    }
