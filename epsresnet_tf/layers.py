"""Keras layers that Keras does not ship: the epsilon gate, the residual gate, He et al.'s
sigmoid shortcut gate and the parameter-free "option A" shortcut.

Every layer is registered for serialisation, so models built from them save to `.keras`
and load back without custom_objects.
"""

import keras
from keras import ops

PACKAGE = "epsresnet_tf"

#: L of docs/semantics.md §1: T jumps from 0 to 1 within about 1/L of the threshold.
GATE_SHARPNESS = 1e6
#: tensorpack's default decay for moving summaries (docs/semantics.md §8).
MONITOR_DECAY = 0.95


def moving_average(average, value, step, decay: float = MONITOR_DECAY):
    """One update of a tensorpack moving summary, in float32 as TF1 computed it.

    tensorpack's `add_moving_summary` is `tf.train.ExponentialMovingAverage(decay,
    num_updates=global_step)`: the decay in effect is min(decay, (1 + n) / (10 + n)) for
    n finished steps, and the update is `average -= (average - value) * (1 - decay)`,
    starting from 0 (no zero-debiasing). The same arithmetic in the same order gives the
    authors' float32 values, stalls included (docs/semantics.md §8). Written by
    hand because Keras has no moving average with TF1's num_updates warm-up.
    Returns the assign op's result."""
    n = ops.cast(step, "float32")
    d = ops.minimum(ops.cast(decay, "float32"), (1.0 + n) / (10.0 + n))
    value = ops.cast(value, "float32")
    return average.assign(average - (average - value) * (1.0 - d))


def _channel_axis(data_format):
    return 1 if data_format == "channels_first" else -1


def monitor_weight(layer, name, initial=0.0):
    # "mean" aggregation lets each replica assign under tf.distribute; the values
    # are then averaged over replicas (README: how discard counts combine).
    return layer.add_weight(
        name=name,
        shape=(),
        dtype="float32",
        trainable=False,
        initializer=keras.initializers.Constant(initial),
        aggregation="mean",
        autocast=False,
    )


class GateLayer(keras.layers.Layer):
    """Base of the residual gates: a gate layer sits in one unit and keeps `discarded_ema`,
    the moving average of "this block is discarded" (docs/semantics.md §8). Everything
    else about a gate kind (how blocks build it, its monitor fields, certification,
    folding) is its entry in `epsresnet_tf.gates`."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class EpsilonGate(GateLayer):
    """S(F) = T(F) * F, the sparsity-promoting function of epsilon-ResNet (docs/semantics.md §1).

    s = max(relu(F - eps) + relu(-F - eps)),  T = relu(1 - L * relu(1 - L * s)).

    scope="batch" (the authors' code): one max over the whole per-replica batch, so one
    T per block and step. scope="sample" (the paper's equation): one T per image.

    `epsilon` is a non-trainable float32 variable, so a callback can change it during
    `fit` without retracing. T is computed in float32 under mixed precision.

    T is piecewise constant; its derivative is 0 except within 1/L of the threshold, where
    it is of size L^2. With `gate_gradient=False` (default) T is a constant for
    differentiation, so dS/dF = T exactly; `gate_gradient=True` keeps the original graph.

    `group_size` G (batch scope; None: the whole per-device batch): the per-device batch of
    N images is split into N/G consecutive groups of G, each with its own T — "virtual
    towers", as the authors' ImageNet runs gated over one GPU's 64 or 42 images
    (docs/semantics.md). When N is not a multiple of G (a last, partial evaluation batch)
    the last group is smaller. Sample scope gates each image on its own, so G changes
    nothing there.

    Monitoring (docs/semantics.md §8), updated on every training call inside the graph:
    `gate_value` (T of the last batch, averaged over groups or images),
    `discarded_ema` (EMA of 1 - T, averaged over groups or images), `response_max` (EMA of
    max |F| over the per-device batch; with groups, of the mean over groups of each
    group's max) and `response_mean` (EMA of mean |F|). All EMAs
    have decay `monitor_decay` (0.95, tensorpack's moving summaries) and start from 0.
    """

    def __init__(
        self,
        epsilon: float = 0.0,
        scope: str = "batch",
        sharpness: float = GATE_SHARPNESS,
        gate_gradient: bool = False,
        monitor_decay: float = MONITOR_DECAY,
        group_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if scope not in ("batch", "sample"):
            raise ValueError(f"EpsilonGate scope must be 'batch' or 'sample', got {scope!r}")
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.group_size = _group_size(group_size)
        self.initial_epsilon = float(epsilon)
        self.scope = scope
        self.sharpness = float(sharpness)
        self.gate_gradient = bool(gate_gradient)
        self.monitor_decay = float(monitor_decay)

    def build(self, input_shape):
        self.epsilon = self.add_weight(
            name="epsilon",
            shape=(),
            dtype="float32",
            trainable=False,
            autocast=False,
            initializer=keras.initializers.Constant(self.initial_epsilon),
            aggregation="mean",
        )
        self.gate_value = monitor_weight(self, "gate_value", 1.0)
        self.discarded_ema = monitor_weight(self, "discarded_ema", 0.0)
        self.response_max = monitor_weight(self, "response_max", 0.0)
        self.response_mean = monitor_weight(self, "response_mean", 0.0)
        self.monitor_steps = monitor_weight(self, "monitor_steps", 0.0)

    @property
    def grouped(self):
        """Batch scope over groups of `group_size` images (one T per group)."""
        return self.scope == "batch" and self.group_size is not None

    def gate(self, residual):
        """T for a float32 residual tensor: shape () in batch scope, (ceil(N/G),) with
        groups, (N, 1, ...) per sample."""
        return self.threshold(self._peak(residual))

    def _peak(self, f):
        """max |F| over the gate's scope (the whole batch, each group, or each image), as
        max(max F, -min F): equal to max(abs(F)) bit for bit (negation is exact), and two
        reads of F instead of abs's read and write plus a read (measured faster: the gate
        is memory-bound, docs/PROFILE.md)."""
        if self.scope == "batch" and not self.grouped:
            return ops.maximum(ops.max(f), -ops.min(f))
        axes = tuple(range(1, len(f.shape)))
        per_image = ops.maximum(
            ops.max(f, axis=axes, keepdims=True), -ops.min(f, axis=axes, keepdims=True)
        )
        if self.grouped:  # then over each group's G per-image values: (ceil(N/G),)
            return ops.max(_group_rows(ops.reshape(per_image, (-1,)), self.group_size), axis=1)
        return per_image

    def threshold(self, peak):
        """T from max |F|. For eps >= 0 at most one of relu(F - eps), relu(-F - eps) is
        non-zero, so their sum is relu(|F| - eps), and the max commutes with the monotone
        relu(. - eps), also in floating point: s = relu(max|F| - eps) is docs/semantics.md §1's
        max(relu(F - eps) + relu(-F - eps)) exactly, in one reduction instead of seven
        passes over F (tests compare it with the 4-ReLU formula bit for bit)."""
        s = ops.relu(peak - self.epsilon)
        one = ops.cast(1.0, "float32")
        return ops.relu(one - self.sharpness * ops.relu(one - self.sharpness * s))

    def call(self, residual, training=None, return_gate=False):
        # max |F| in the residual's own dtype, then the (per-image or per-group) maxima cast
        # to float32: the max of bfloat16 values is one of them, and bfloat16 → float32 is
        # exact, so T is what float32 gives from the same F. Casting the whole F first was
        # an extra pass over it (bf16 gate overhead, docs/PROFILE.md).
        peak = ops.cast(self._peak(residual), "float32")
        gate = self.threshold(peak)
        if not self.gate_gradient:
            gate = ops.stop_gradient(gate)
        if training:
            self._update_monitors(residual, peak, gate)
        out = self._scaled(residual, gate)
        # `return_gate`: the backward skip (train/skip.py) reads this step's T with S(F).
        # Returned, not kept on the layer: replicas trace the same layer in parallel.
        return (out, gate) if return_gate else out

    def _scaled(self, residual, gate):
        """S(F) = T F, for T of any scope."""
        if self.grouped:  # each image takes its group's T
            n = ops.shape(residual)[0]
            per_image = ops.repeat(gate, self.group_size)[:n]
            per_image = ops.reshape(per_image, (-1,) + (1,) * (len(residual.shape) - 1))
            return ops.cast(per_image, residual.dtype) * residual
        if (
            self.scope == "batch"
            and not self.gate_gradient
            and keras.backend.backend() == "tensorflow"
        ):
            return _scaled_by_scalar_gate(residual, gate)
        return ops.cast(gate, residual.dtype) * residual

    def _update_monitors(self, f, peak, gate):
        # The authors' monitors are tensorpack moving summaries (`moving_average`: decay
        # 0.95 with the num_updates warm-up, from 0, not debiased; docs/semantics.md §8).
        # `monitor_steps` counts this gate's training steps: the global step for a gate
        # that trains from the first step on.
        steps = ops.convert_to_tensor(self.monitor_steps)
        t = ops.mean(gate)  # over groups (or images): what mean-aggregated replicas give
        d = self.monitor_decay
        self.gate_value.assign(t)
        moving_average(self.discarded_ema, 1.0 - t, steps, d)
        # In batch scope the gate's own reduction is max |F|; per sample, one more max.
        # With groups, the mean over groups of each group's max |F|: what mean-aggregated
        # replicas of G images give, so the monitor does not depend on how the groups lie
        # over devices, and an unbiased estimate of the authors' tower-0 value.
        if self.grouped:
            top = ops.mean(peak)
        else:
            top = peak if self.scope == "batch" else ops.max(peak)
        moving_average(self.response_max, top, steps, d)
        # mean |F| in F's dtype: TensorFlow sums bfloat16 in float32 and rounds the mean
        # once (relative error ≤ 2^-9 in a monitor that decides nothing)
        moving_average(self.response_mean, ops.cast(ops.mean(ops.abs(f)), "float32"), steps, d)
        self.monitor_steps.assign(steps + 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            epsilon=self.initial_epsilon,
            scope=self.scope,
            sharpness=self.sharpness,
            gate_gradient=self.gate_gradient,
            monitor_decay=self.monitor_decay,
            group_size=self.group_size,
        )
        return config


def _group_size(group_size):
    """None, or a positive int (the images per group)."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be None or a positive integer, got {group_size!r}")
    return int(group_size)


def _group_rows(values, group_size):
    """A vector of N non-negative per-image values as (ceil(N/G), G), one row per group of
    G consecutive images; a partial last group is padded with zeros, which leave a max
    of non-negative values unchanged."""
    n = ops.shape(values)[0]
    pad = (group_size - n % group_size) % group_size
    return ops.reshape(ops.pad(values, [[0, pad]]), (-1, group_size))


def _scaled_by_scalar_gate(residual, gate):
    """T F for a scalar T (constant for differentiation, so dS/dF = T), without a pass over
    F when T is exactly 1 — an open gate, almost every step of almost every block: forward
    and backward each pass the tensor through instead of multiplying it by 1.0 (the same
    values). The gradient is our own because the gradient of a plain `cond` makes its
    untaken branch emit zeros the size of F, which costs what it saves (docs/PROFILE.md)."""
    import tensorflow as tf

    @tf.custom_gradient
    def scaled(f):
        is_open = tf.equal(gate, 1.0)
        t = tf.cast(gate, f.dtype)

        def grad(upstream):
            return tf.cond(is_open, lambda: tf.identity(upstream), lambda: t * upstream)

        return tf.cond(is_open, lambda: tf.identity(f), lambda: t * f), grad

    return scaled(residual)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training pass is TensorFlow's fused kernel, as tensorpack's
    BatchNorm (what the authors trained with) called it.

    Why: Keras 3 builds training-mode BN from `moments` and elementwise ops, several passes
    over each activation forward and more backward; `FusedBatchNormV3` and its gradient are
    one kernel each (oneDNN on CPU, cuDNN on GPU), the largest single speed-up of a CPU
    training step here (docs/PROFILE.md). Inference, non-4-D inputs, a BN without scale or
    centre, and other backends use the Keras layer unchanged. Moving statistics, weights and config are Keras's, so the
    two layers are interchangeable in a saved model.

    `group_size` G ("ghost" BN, None: off): in training, each group of G consecutive images
    of the per-device batch is normalised with its own batch statistics, as each of the
    authors' GPU towers normalised its own 64 or 42 images (docs/semantics.md); the batch
    must be a multiple of G. The moving statistics move towards the mean over groups of
    the groups' batch mean and (uncorrected) variance. tensorpack kept tower 0's; under
    MirroredStrategy Keras's moving statistics (aggregation "none") are updated by each
    replica on its own copy, and reads and checkpoints see replica 0's — tower 0's again
    (docs/semantics.md). Inference is unchanged.
    """

    def __init__(self, *args, group_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_size = _group_size(group_size)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        fused = (
            len(inputs.shape) == 4
            and self.scale
            and self.center
            and keras.backend.backend() == "tensorflow"
        )
        if self.group_size is not None:
            if fused:
                return self._fused_ghost(inputs)
            return self._ghost(inputs)
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        axis = self._axis()
        data_format = "NCHW" if axis == 1 else "NHWC"
        # The kernel takes float16/bfloat16 activations with float32 statistics.
        x = inputs if inputs.dtype in (tf.float16, tf.bfloat16) else ops.cast(inputs, "float32")
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x,
            ops.cast(self.gamma, "float32"),
            ops.cast(self.beta, "float32"),
            epsilon=self.epsilon,
            data_format=data_format,
            is_training=True,
        )
        # The kernel returns the Bessel-corrected variance; Keras's moving variance (and so
        # a run's agreement across replica counts) uses the plain batch variance.
        count = ops.cast(ops.size(x) // ops.shape(x)[axis], "float32")
        self._move(mean, variance * (count - 1.0) / count)
        return ops.cast(y, self.compute_dtype)

    def _axis(self):
        """The channel axis of a 4-D input, 1 or 3."""
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        return axis % 4

    def _move(self, mean, variance):
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))

    def _fused_ghost(self, inputs):
        """All groups through the fused kernel at once: the K = N/G groups become K blocks
        of channels (N, H, W, C) -> (K, G, H, W, C) -> (G, H, W, K*C), so each of the K*C
        channels holds one group's images of one channel; gamma and beta are tiled K times.
        One transpose each way instead of K kernel calls (NCHW alike, with (G, K*C, H, W))."""
        import tensorflow as tf

        g = self.group_size
        channels_first = self._axis() == 1
        x = inputs if inputs.dtype in (tf.float16, tf.bfloat16) else ops.cast(inputs, "float32")
        shape = tf.shape(x)
        c = x.shape[1] if channels_first else x.shape[3]
        k = shape[0] // g
        grouped = tf.reshape(x, tf.concat([[k, g], shape[1:]], 0))
        if channels_first:  # (K, G, C, H, W) -> (G, K, C, H, W) -> (G, K*C, H, W)
            blocks = tf.reshape(
                tf.transpose(grouped, [1, 0, 2, 3, 4]), tf.stack([g, k * c, shape[2], shape[3]])
            )
        else:  # (K, G, H, W, C) -> (G, H, W, K, C) -> (G, H, W, K*C)
            blocks = tf.reshape(
                tf.transpose(grouped, [1, 2, 3, 0, 4]), tf.stack([g, shape[1], shape[2], k * c])
            )
        gamma = tf.tile(ops.cast(self.gamma, "float32"), [k])
        beta = tf.tile(ops.cast(self.beta, "float32"), [k])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            blocks,
            gamma,
            beta,
            epsilon=self.epsilon,
            data_format="NCHW" if channels_first else "NHWC",
            is_training=True,
        )
        if channels_first:
            y = tf.reshape(y, tf.stack([g, k, c, shape[2], shape[3]]))
            y = tf.reshape(tf.transpose(y, [1, 0, 2, 3, 4]), shape)
        else:
            y = tf.reshape(y, tf.stack([g, shape[1], shape[2], k, c]))
            y = tf.reshape(tf.transpose(y, [3, 0, 1, 2, 4]), shape)
        count = ops.cast(ops.size(x) // (shape[0] // g * c), "float32")  # G*H*W per group
        variance = variance * (count - 1.0) / count  # the kernel's is Bessel-corrected
        self._move(
            ops.mean(ops.reshape(mean, (-1, c)), axis=0),
            ops.mean(ops.reshape(variance, (-1, c)), axis=0),
        )
        return ops.cast(y, self.compute_dtype)

    def _ghost(self, inputs):
        """Ghost BN from `moments` for inputs the fused kernel does not take (2-D, no scale or
        centre, other backends): (N, ...) -> (N/G, G, ...), moments per group."""
        g = self.group_size
        x = ops.cast(inputs, "float32")
        ndim = len(x.shape)
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        axis = axis % ndim
        grouped = ops.reshape(x, (-1, g) + tuple(x.shape[1:]))
        reduce = tuple(i + 1 for i in range(ndim) if i != axis)  # G and the non-channel axes
        mean, variance = ops.moments(grouped, axes=reduce, keepdims=True)
        y = (grouped - mean) / ops.sqrt(variance + self.epsilon)
        shape = [1] * (ndim + 1)
        shape[axis + 1] = x.shape[axis]
        if self.scale:
            y = y * ops.reshape(ops.cast(self.gamma, "float32"), shape)
        if self.center:
            y = y + ops.reshape(ops.cast(self.beta, "float32"), shape)
        channels = x.shape[axis]
        self._move(
            ops.mean(ops.reshape(mean, (-1, channels)), axis=0),
            ops.mean(ops.reshape(variance, (-1, channels)), axis=0),
        )
        return ops.cast(ops.reshape(y, ops.shape(x)), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(group_size=self.group_size)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualGate(GateLayer):
    """Savarese et al.'s gate on a pair [F, x] with one scalar k (initialised to 1), g = ReLU.

    mode="residual": u = g(k) F + x.  mode="plain": u = g(k) f + (1 - g(k)) x.
    k gets no weight decay unless `k_decay` > 0 (then k_decay * k^2, the paper's option).
    `gate_value` is g(k) for monitoring; a block with g(k) = 0 is an identity.
    """

    def __init__(
        self,
        mode: str = "residual",
        k_decay: float = 0.0,
        monitor_decay: float = MONITOR_DECAY,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in ("residual", "plain"):
            raise ValueError(f"ResidualGate mode must be 'residual' or 'plain', got {mode!r}")
        self.mode = mode
        self.k_decay = float(k_decay)
        self.monitor_decay = float(monitor_decay)

    def build(self, input_shape):
        regularizer = keras.regularizers.L2(self.k_decay) if self.k_decay > 0 else None
        self.k = self.add_weight(
            name="k",
            shape=(),
            dtype="float32",
            trainable=True,
            initializer=keras.initializers.Constant(1.0),
            regularizer=regularizer,
            autocast=False,
        )
        self.discarded_ema = monitor_weight(self, "discarded_ema", 0.0)
        self.monitor_steps = monitor_weight(self, "monitor_steps", 0.0)

    @property
    def gate_value(self):
        return ops.relu(self.k)

    def call(self, inputs, training=None):
        residual, shortcut = inputs
        g = ops.relu(self.k)
        if training:  # a tensorpack moving summary, as the ε-gate's (docs/semantics.md §8)
            steps = ops.convert_to_tensor(self.monitor_steps)
            discarded = ops.cast(ops.less_equal(self.k, 0.0), "float32")
            moving_average(self.discarded_ema, discarded, steps, self.monitor_decay)
            self.monitor_steps.assign(steps + 1.0)
        g = ops.cast(g, residual.dtype)
        if self.mode == "residual":
            return g * residual + shortcut
        return g * residual + (ops.cast(1.0, residual.dtype) - g) * shortcut

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, k_decay=self.k_decay, monitor_decay=self.monitor_decay)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SigmoidShortcutGate(keras.layers.Layer):
    """He et al. 2016 §3, Fig. 2(c, d): g(x) = sigmoid(conv1x1(x) + b) on a pair [F, x].

    mode="exclusive": u = g F + (1 - g) x.  mode="shortcut_only": u = F + (1 - g) x.
    `bias_init` is the gate bias b_g the paper sweeps (0 … -10).
    """

    def __init__(
        self,
        mode: str = "exclusive",
        bias_init: float = 0.0,
        data_format: str = "channels_last",
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in ("exclusive", "shortcut_only"):
            raise ValueError(
                f"SigmoidShortcutGate mode must be 'exclusive' or 'shortcut_only', got {mode!r}"
            )
        self.mode = mode
        self.bias_init = float(bias_init)
        self.data_format = data_format
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        channels = input_shape[1][_channel_axis(self.data_format)]
        self.gate_conv = keras.layers.Conv2D(
            channels,
            1,
            data_format=self.data_format,
            activation="sigmoid",
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_initializer=keras.initializers.Constant(self.bias_init),
            name="gate_conv",
        )
        self.gate_conv.build(input_shape[1])

    def call(self, inputs):
        residual, shortcut = inputs
        g = self.gate_conv(shortcut)
        carry = ops.cast(1.0, g.dtype) - g
        if self.mode == "exclusive":
            return g * residual + carry * shortcut
        return residual + carry * shortcut

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode,
            bias_init=self.bias_init,
            data_format=self.data_format,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PoolPadShortcut(keras.layers.Layer):
    """The parameter-free "option A" shortcut of the CIFAR nets: 2x2 average pool, then
    zero channels padded on both sides (in//2 each, as the authors' code does).

    Written by hand because Keras has no channel-padding layer.
    """

    def __init__(
        self, out_channels: int, stride: int = 2, data_format: str = "channels_last", **kwargs
    ):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.data_format = data_format

    def call(self, x):
        if self.stride > 1:
            x = ops.average_pool(
                x, self.stride, self.stride, padding="valid", data_format=self.data_format
            )
        axis = _channel_axis(self.data_format) % len(x.shape)
        missing = self.out_channels - x.shape[axis]
        if missing:
            pad = [[0, 0]] * len(x.shape)
            pad[axis] = [missing // 2, missing - missing // 2]
            x = ops.pad(x, pad)
        return x

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        spatial = (2, 3) if self.data_format == "channels_first" else (1, 2)
        for i in spatial:
            shape[i] = None if shape[i] is None else shape[i] // self.stride
        shape[_channel_axis(self.data_format)] = self.out_channels
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            out_channels=self.out_channels, stride=self.stride, data_format=self.data_format
        )
        return config


def gate_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's gate layers (every `GateLayer`, whatever its kind) in network order."""
    return [layer for layer in model.layers if isinstance(layer, GateLayer)]
