"""Training-throughput measurement and `epsresnet bench train` (issue 6).

    epsresnet bench train ARCH [--gate none|eps] [--no-monitor] [--batch 128] [--steps N]
                               [--warmup W] [--loop fit|custom] [--jit | --no-jit]
                               [--steps-per-execution K] [--data-format F]
                               [--mixed-precision] [--intra-threads T] [--inter-threads T]
                               [--json]

One configuration is built (random weights, synthetic in-memory batch, so the input
pipeline is not part of the figure), warmed up (tracing, XLA compilation, oneDNN primitive
creation), then timed over `--steps` steps; the figure is images per second of the
steady state. Achieved GFLOP/s come from `model_stats(model)["macs"]`: a training step
costs about 3 forward passes, and a MAC is 2 FLOPs, so 6 x MACs FLOPs per image. The peak
is cores x FP32 FLOP/cycle x the clock in /proc/cpuinfo, the FLOP/cycle from the widest
FMA the CPU reports (two FMA pipes: AVX-512 64, AVX2 32, SSE 16).

The discard monitor is the in-graph `.assign` of each EpsilonGate's monitor variables.
`monitor=False` swaps the gates' class for `QuietEpsilonGate`, whose `_update_monitors`
does nothing, so gate cost and monitor cost are separate ratios.

Two training loops: "fit" is Keras `compile`/`fit` (a compiled train function; timing is
taken between batch-end callbacks, so fit's start-up is not counted) and "custom" is a
hand-written `tf.function` step over the same Keras 3 layers, loss and optimizer.
"""
import functools
import json
import os
import platform
import statistics
import time

from epsresnet_tf.errors import UserError

#: The fastest combination measured on the 2-core CPU this project benchmarks on
#: (BENCHMARKS.md "## Training throughput", docs/PROFILE.md); `bench train` defaults.
CPU_DEFAULTS = {
    "loop": "fit",
    "jit_compile": False,   # XLA's CPU convolutions are AVX2 Eigen; oneDNN's use AVX-512/AMX
    "steps_per_execution": 1,
    "data_format": "channels_last",
}
#: FP32 FLOP per cycle per core by vector ISA: 2 FMA pipes x lanes x 2 FLOP (an FMA is a
#: multiply and an add). oneDNN dispatches to the widest one at run time.
FLOP_PER_CYCLE = {"avx512": 64, "avx2": 32, "sse": 16}
GATES = ("none", "eps")
LOOPS = ("fit", "custom")


# --- machine ------------------------------------------------------------------------------

def vector_isa(flags):
    """The widest FP32 FMA instruction set in a /proc/cpuinfo flags list."""
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "sse"


def cpu_details():
    """(model name, usable cores, clock in GHz or None, vector ISA name)."""
    name, mhz, flags = platform.processor() or "unknown CPU", None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown CPU", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return name, cores, (mhz / 1000.0 if mhz else None), vector_isa(flags)


def peak_gflops(cores=None, ghz=None, flop_per_cycle=None):
    """FP32 peak of this CPU in GFLOP/s: cores x FLOP/cycle x clock (None if unknown)."""
    _, c, g, isa = cpu_details()
    cores = cores or c
    ghz = ghz or g
    flop_per_cycle = flop_per_cycle or FLOP_PER_CYCLE[isa]
    return None if ghz is None else cores * flop_per_cycle * ghz


def train_gflop_per_image(macs):
    """Training FLOPs per image in GFLOP: forward 2 FLOP/MAC, training about 3 forwards."""
    return 3 * 2 * macs / 1e9


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def versions():
    import keras
    import tensorflow as tf
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__}


# --- the monitor-off gate -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _quiet_gate_class():
    from epsresnet_tf.layers import EpsilonGate

    class QuietEpsilonGate(EpsilonGate):
        """An EpsilonGate with the discard monitor off: identical forward pass and
        gradient, no monitor-variable updates (benchmarks only; not registered)."""

        def _update_monitors(self, f, peak, gate):
            return None

    return QuietEpsilonGate


def _swap_layer_class(model, old, new):
    """Give every `old` layer of `model` (not already a `new`) the class `new`, in place:
    weights and config are kept, only `call` changes. Must run before the model is traced
    (benchmark variants only). Returns the number of layers changed."""
    n = 0
    for layer in model.layers:
        if isinstance(layer, old) and not isinstance(layer, new):
            layer.__class__ = new
            n += 1
    return n


def disable_monitors(model):
    """Turn every EpsilonGate of `model` into a QuietEpsilonGate (see _swap_layer_class)."""
    from epsresnet_tf.layers import EpsilonGate
    return _swap_layer_class(model, EpsilonGate, _quiet_gate_class())


def unfuse_batchnorm(model):
    """Turn every FusedBatchNormalization of `model` back into Keras's own
    BatchNormalization, to measure what the fused kernel buys (see _swap_layer_class)."""
    import keras

    from epsresnet_tf.layers import FusedBatchNormalization
    return _swap_layer_class(model, FusedBatchNormalization, keras.layers.BatchNormalization)


# --- one configuration --------------------------------------------------------------------

def configure_threads(intra=None, inter=None):
    """TensorFlow's op thread pools; only effective before the runtime starts."""
    import tensorflow as tf
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    except RuntimeError as err:  # the runtime is already initialised
        raise UserError(f"thread settings must come before TensorFlow starts: {err}") from err


def build(arch, gate="none", *, epsilon=2.5, monitor=True, data_format="channels_last",
          mixed_precision=False, input_shape=None, classes=10, seed=0, fused_bn=True):
    """The network to time: `build_model` with the gate, the monitor possibly off, under
    the mixed_float16 policy if asked (the global policy is restored afterwards), with
    Keras's unfused BatchNormalization if `fused_bn` is False."""
    import keras

    from epsresnet_tf.models import build_model
    if gate not in GATES:
        raise UserError(f"--gate must be one of {', '.join(GATES)}, got {gate!r}")
    keras.utils.set_random_seed(seed)
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    try:
        options = {"epsilon": epsilon} if gate == "eps" else {}
        model = build_model(arch, gate=gate, classes=classes, data_format=data_format,
                            input_shape=input_shape, **options)
    finally:
        keras.mixed_precision.set_global_policy(old)
    if gate == "eps" and not monitor:
        disable_monitors(model)
    if not fused_bn:
        unfuse_batchnorm(model)
    return model


def synthetic_batch(model, batch, seed=0):
    """A fixed (images, labels) batch of the model's input shape, as tf constants."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(model.input_shape[1:])
    classes = int(model.output_shape[-1])
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    y = tf.constant(rng.integers(0, classes, size=(batch,), dtype=np.int32))
    return x, y


class Trainer:
    """Runs training steps of one model; `run(n)` does n steps and returns seconds of
    steady-state time and the number of steps that time covers."""

    def __init__(self, model, batch, *, loop="fit", jit_compile=False, steps_per_execution=1,
                 learning_rate=0.01, seed=0):
        import keras
        if loop not in LOOPS:
            raise UserError(f"--loop must be one of {', '.join(LOOPS)}, got {loop!r}")
        if steps_per_execution < 1:
            raise UserError(f"--steps-per-execution must be >= 1, got {steps_per_execution}")
        self.model, self.batch, self.loop = model, batch, loop
        self.spe = int(steps_per_execution)
        self.jit_compile = bool(jit_compile)
        self.mixed = model.dtype_policy.name == "mixed_float16" or any(
            getattr(layer, "dtype_policy", None) is not None
            and layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
        self.x, self.y = synthetic_batch(model, batch, seed)
        opt = keras.optimizers.SGD(learning_rate, momentum=0.9)
        self.last_loss = None
        if loop == "fit":
            self._setup_fit(opt)
        else:
            self._setup_custom(opt)

    # Keras fit ---------------------------------------------------------------------------
    def _setup_fit(self, opt):
        import keras
        import tensorflow as tf
        self.model.compile(
            optimizer=opt,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=self.jit_compile, steps_per_execution=self.spe)
        self.dataset = tf.data.Dataset.from_tensors((self.x, self.y)).repeat()

        trainer = self

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                trainer._stamps.append((time.perf_counter(), batch))
                if logs and "loss" in logs:
                    trainer.last_loss = float(logs["loss"])

        self._clock = Clock()

    def _run_fit(self, steps):
        steps = max(steps, 2 * self.spe)
        steps -= steps % self.spe
        self._stamps = []
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,
                       callbacks=[self._clock])
        # Keras passes the index of the last step of each execution to on_train_batch_end.
        (t0, b0), (t1, b1) = self._stamps[0], self._stamps[-1]
        return t1 - t0, b1 - b0

    # custom tf.function step -------------------------------------------------------------
    def _setup_custom(self, opt):
        import keras
        import tensorflow as tf
        model = self.model
        if self.mixed:
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(model.trainable_variables)
        self.optimizer = opt
        spe = self.spe

        def one_step(x, y):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                    y, logits, from_logits=True))
                if model.losses:
                    loss = loss + tf.cast(tf.add_n(model.losses), tf.float32)
                scaled = opt.scale_loss(loss) if self.mixed else loss
            variables = model.trainable_variables
            grads = tape.gradient(scaled, variables)
            opt.apply(grads, variables)
            return loss

        @tf.function(jit_compile=self.jit_compile)
        def step(x, y):
            loss = tf.constant(0.0)
            for _ in tf.range(spe) if spe > 1 else range(1):
                loss = one_step(x, y)
            return loss

        self._step = step

    def _run_custom(self, steps):
        calls = max(1, steps // self.spe)
        loss = self._step(self.x, self.y)          # not timed: the clock starts after it
        loss.numpy()
        t0 = time.perf_counter()
        for _ in range(calls):
            loss = self._step(self.x, self.y)
        self.last_loss = float(loss.numpy())
        return time.perf_counter() - t0, calls * self.spe

    def run(self, steps):
        return self._run_fit(steps) if self.loop == "fit" else self._run_custom(steps)


def _checked(run, steps):
    """run(steps), with TensorFlow's CPU refusal of NCHW convolutions as a UserError."""
    import tensorflow as tf
    try:
        return run(steps)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
        if "NHWC" in str(err):
            raise UserError("channels_first training has no TensorFlow CPU kernels (conv "
                            "backprop supports NHWC only): use --jit, a GPU, or "
                            "channels_last") from None
        raise


def measure_variants(variants, *, batch=128, steps=15, warmup=3, repeats=1, loop=None,
                     jit_compile=None, steps_per_execution=None, data_format=None,
                     mixed_precision=False, input_shape=None, classes=10, fused_bn=True,
                     log=None):
    """Time several network variants in one process, interleaved round by round (so slow
    drifts of a shared machine hit each alike). `variants` maps a label to
    dict(arch=, gate=, monitor=) and optionally loop=, jit_compile=, steps_per_execution=
    overriding the shared settings. Returns {label: result dict}; img_s is the median over
    `repeats` rounds of `steps` timed steps, after `warmup` untimed ones."""
    loop = loop or CPU_DEFAULTS["loop"]
    jit_compile = CPU_DEFAULTS["jit_compile"] if jit_compile is None else jit_compile
    spe = steps_per_execution or CPU_DEFAULTS["steps_per_execution"]
    data_format = data_format or CPU_DEFAULTS["data_format"]
    if batch < 1 or steps < 1 or warmup < 0 or repeats < 1:
        raise UserError("batch, steps and repeats must be >= 1 and warmup >= 0")
    from epsresnet_tf.models.describe import model_stats
    trainers, stats, opts = {}, {}, {}
    for label, v in variants.items():
        model = build(v["arch"], v.get("gate", "none"), monitor=v.get("monitor", True),
                      epsilon=v.get("epsilon", 2.5), data_format=data_format,
                      mixed_precision=mixed_precision, input_shape=input_shape,
                      classes=classes, fused_bn=fused_bn)
        stats[label] = model_stats(model)
        opts[label] = dict(loop=v.get("loop", loop),
                           jit_compile=bool(v.get("jit_compile", jit_compile)),
                           steps_per_execution=int(v.get("steps_per_execution", spe)))
        trainers[label] = Trainer(model, batch, **opts[label])
        t = time.perf_counter()
        o = opts[label]
        _checked(trainers[label].run, max(warmup, 1)
                 + (o["steps_per_execution"] if o["loop"] == "fit" else 0))
        if log:
            log(f"{label}: built and warmed up in {time.perf_counter() - t:.1f} s")
    rates = {label: [] for label in variants}
    load_before = loadavg()
    for r in range(repeats):
        for label, trainer in trainers.items():
            seconds, done = trainer.run(steps)
            rates[label].append(done * batch / seconds)
            if log:
                log(f"round {r + 1}/{repeats} {label}: {rates[label][-1]:.1f} img/s")
    load_after = loadavg()
    peak = peak_gflops()
    out = {}
    for label, v in variants.items():
        img_s = statistics.median(rates[label])
        macs = stats[label]["macs"]
        gflop_img = train_gflop_per_image(macs)
        out[label] = {
            "arch": v["arch"], "gate": v.get("gate", "none"),
            "monitor": bool(v.get("monitor", True)) if v.get("gate") == "eps" else None,
            "batch": batch, "steps": steps, "warmup": warmup, "repeats": repeats,
            **opts[label],
            "data_format": data_format, "mixed_precision": bool(mixed_precision),
            "fused_bn": bool(fused_bn),
            "img_s": img_s, "img_s_best": max(rates[label]), "img_s_runs": rates[label],
            "step_ms": 1000.0 * batch / img_s,
            "macs": macs, "train_gflop_per_img": gflop_img, "gflop_s": img_s * gflop_img,
            "peak_gflop_s": peak, "peak_share": (img_s * gflop_img / peak) if peak else None,
            "final_loss": trainers[label].last_loss,
            "load_before": load_before, "load_after": load_after,
        }
    return out


def measure(arch, gate="none", *, monitor=True, **kwargs):
    """One configuration; see measure_variants for the keyword arguments."""
    label = f"{arch}/{gate}"
    return measure_variants({label: dict(arch=arch, gate=gate, monitor=monitor)},
                            **kwargs)[label]


# --- CLI ----------------------------------------------------------------------------------

def _positive(value):
    n = int(value)
    if n < 1:
        raise ValueError(value)
    return n


def bench_train(args):
    configure_threads(args.intra_threads, args.inter_threads)
    if args.gate != "eps" and args.no_monitor:
        raise UserError("--no-monitor only applies to --gate eps")
    result = measure(
        args.arch, args.gate, monitor=not args.no_monitor, batch=args.batch, steps=args.steps,
        warmup=args.warmup, repeats=args.repeats, loop=args.loop, jit_compile=args.jit,
        steps_per_execution=args.steps_per_execution, data_format=args.data_format,
        mixed_precision=args.mixed_precision, fused_bn=not args.keras_bn)
    result.update(intra_threads=args.intra_threads, inter_threads=args.inter_threads,
                  onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"), **versions())
    if args.json:
        print(json.dumps(result))
    else:
        peak = (f", {100 * result['peak_share']:.0f}% of the {result['peak_gflop_s']:.0f} "
                f"GFLOP/s FP32 peak" if result["peak_share"] else "")
        print(f"{args.arch} gate={args.gate}"
              + (" monitor=off" if args.no_monitor else "")
              + f" batch={args.batch}: {result['img_s']:.1f} img/s "
              f"({result['step_ms']:.0f} ms/step), {result['gflop_s']:.1f} GFLOP/s{peak} "
              f"[loop={result['loop']} jit={result['jit_compile']} "
              f"spe={result['steps_per_execution']} {result['data_format']}"
              + (" mixed_float16" if args.mixed_precision else "")
              + (" keras-bn" if args.keras_bn else "") + "]")


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="performance measurements (training throughput)",
        description="Performance measurements; `make bench` runs the whole suite.")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    sub.required = True
    p = sub.add_parser(
        "train", help="training images/s of one configuration after warm-up",
        description="Time training steps of one network on a synthetic batch (the input "
                    "pipeline is excluded) after a warm-up; print images/s and achieved "
                    "GFLOP/s. Defaults are the fastest combination measured on CPU.")
    p.add_argument("arch", help="architecture name, e.g. cifar-basic-110")
    p.add_argument("--gate", choices=GATES, default="none", help="residual gate (default none)")
    p.add_argument("--no-monitor", action="store_true",
                   help="with --gate eps: switch the in-graph discard monitor off")
    p.add_argument("--batch", type=_positive, default=128, help="batch size (default 128)")
    p.add_argument("--steps", type=_positive, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--repeats", type=_positive, default=1,
                   help="timed rounds; the median is reported (default 1)")
    p.add_argument("--loop", choices=LOOPS, default=CPU_DEFAULTS["loop"],
                   help=f"Keras fit or a custom tf.function step (default {CPU_DEFAULTS['loop']})")
    p.add_argument("--jit", dest="jit", action="store_true", default=CPU_DEFAULTS["jit_compile"],
                   help="XLA-compile the step (jit_compile=True)")
    p.add_argument("--no-jit", dest="jit", action="store_false", help="no XLA")
    p.add_argument("--steps-per-execution", type=_positive,
                   default=CPU_DEFAULTS["steps_per_execution"],
                   help=f"steps per compiled call (default {CPU_DEFAULTS['steps_per_execution']})")
    p.add_argument("--data-format", choices=("channels_last", "channels_first"),
                   default=CPU_DEFAULTS["data_format"],
                   help=f"conv layout (default {CPU_DEFAULTS['data_format']}; channels_first is for GPUs)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 policy (float16 compute, float32 variables, loss scaling)")
    p.add_argument("--keras-bn", action="store_true",
                   help="Keras's own BatchNormalization instead of the fused kernel the "
                        "models use (to measure what fusing buys)")
    p.add_argument("--intra-threads", type=_positive, default=None,
                   help="TensorFlow intra-op threads (default: TensorFlow's, = cores)")
    p.add_argument("--inter-threads", type=_positive, default=None,
                   help="TensorFlow inter-op threads (default: TensorFlow's)")
    p.add_argument("--json", action="store_true", help="print one JSON object (img_s, gflop_s, …)")
    p.set_defaults(func=bench_train)
