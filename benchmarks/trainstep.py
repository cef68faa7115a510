"""The training-step measurement library of `make bench` (benchmarks/bench_train.py) and
benchmarks/profile_train.py; outside the package, as timm keeps its benchmark.py.

    python benchmarks/bench_train.py --one ARCH [--gate none|eps] [--no-monitor]
        [--recipe NAME] [--batch 128] [--steps N] [--warmup W] [--repeats R]
        [--loop fit|custom] [--jit | --no-jit] [--steps-per-execution K]
        [--data-format F] [--precision float32|bf16|fp16] [--keras-bn]
        [--intra-threads T] [--inter-threads T] [--json]

What is timed is the step `epsresnet train` runs: `build_training_step` takes a resolved
config (`resolve_config`: the defaults are cifar10-eps-110's, or a recipe's) and does what
`epsresnet_tf.train.loop.run_training` does between "set the seed" and "build the
optimizer": `build_model` with the gate kind's net options, the side head and the weight
decay; the loop's own `TrainingModel` (`epsresnet_tf.train.model`: cross-entropy + side
weight × the side head's, the weight-decay staircase from the optimizer's step, the
discarded-count moving average, the metrics); `make_optimizer` (TF1 momentum);
`compile` with the config's `xla`. Only the data differ: one synthetic in-memory batch,
so the input pipeline is not in the figure. tests/test_bench.py checks that the step's
losses and weights equal `run_training`'s on the same batch and weights.

One configuration is built, warmed up (tracing, XLA compilation, oneDNN primitive
creation), then timed over `steps` steps; the figure is images per second of the steady
state. Achieved GFLOP/s come from `model_stats(net)["macs"]` (side head included): a
training step costs about 3 forward passes and a MAC is 2 FLOPs, so 6 × MACs FLOPs per
image. The peak is cores × FP32 FLOP/cycle × the clock in /proc/cpuinfo, the FLOP/cycle
from the widest FMA the CPU reports (two FMA pipes: AVX-512 64, AVX2 32, SSE 16).

Monitors off (`monitor=False`, ε-gate only) swaps the gates' class for `QuietEpsilonGate`
(no `.assign` of the gates' monitor variables) and the training model's for one whose
discarded-count moving average is not updated, so the gate's cost and the monitors'
cost are separate ratios; the loss, gradients and weights are unchanged.

Two ways to drive the step: "fit" is what `epsresnet train` does (Keras `fit` calling
`TrainingModel.train_step`; timing is taken between batch-end callbacks, so fit's
start-up is not counted) and "custom" is a `tf.function` of our own calling the same
`train_step` (what the multi-worker loop does under `strategy.run`).
"""

import functools
import inspect
import json
import os
import platform
import statistics
import time

from epsresnet_tf.config import PRECISIONS
from epsresnet_tf.errors import UserError

#: The fastest combination measured on the 2-core CPU this project benchmarks on
#: (BENCHMARKS.md "## Training throughput", docs/PROFILE.md); `bench_train.py --one` defaults.
CPU_DEFAULTS = {
    "loop": "fit",
    "jit_compile": False,  # XLA's CPU convolutions are AVX2 Eigen; oneDNN's use AVX-512/AMX
    "steps_per_execution": 1,
    "data_format": "channels_last",
}
#: FP32 FLOP per cycle per core by vector ISA: 2 FMA pipes x lanes x 2 FLOP (an FMA is a
#: multiply and an add). oneDNN dispatches to the widest one at run time.
FLOP_PER_CYCLE = {"avx512": 64, "avx2": 32, "sse": 16}
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


#: The /proc/cpuinfo flags that decide the kernels oneDNN picks (FP32 FMA width, bfloat16).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags():
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags():
    """The ISA_FLAGS this CPU has, in ISA_FLAGS order."""
    flags = cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]


def has_fast_bf16():
    """AVX512-BF16 or AMX-BF16: oneDNN runs bfloat16 convolutions natively."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


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

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


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


def disable_monitors(net):
    """Turn every EpsilonGate of `net` into a QuietEpsilonGate (see _swap_layer_class)."""
    from epsresnet_tf.layers import EpsilonGate

    return _swap_layer_class(net, EpsilonGate, _quiet_gate_class())


@functools.lru_cache(maxsize=None)
def _quiet_training_model_class():
    """The loop's TrainingModel without the discarded-count moving average (benchmarks
    only): the same loss, gradients and update. Made on first use (it imports TensorFlow)."""
    from epsresnet_tf.train.model import TrainingModel

    class QuietTrainingModel(TrainingModel):
        def _update_discarded_count(self):
            return None

    return QuietTrainingModel


def unfuse_batchnorm(model):
    """Turn every FusedBatchNormalization of `model` back into Keras's own
    BatchNormalization, to measure what the fused kernel buys (see _swap_layer_class)."""
    import keras

    from epsresnet_tf.layers import FusedBatchNormalization

    return _swap_layer_class(model, FusedBatchNormalization, keras.layers.BatchNormalization)


# --- threads ------------------------------------------------------------------------------


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


# --- the step `epsresnet train` runs ------------------------------------------------------


def bench_config(
    arch=None,
    gate=None,
    *,
    recipe=None,
    batch=None,
    epsilon=None,
    jit_compile=None,
    data_format=None,
    precision=None,
    **overrides,
):
    """A resolved run config (`resolve_config`: the loop's defaults, i.e. cifar10-eps-110's,
    or recipe `recipe`'s) with the benchmark's settings applied; None leaves a value as
    the config has it. `jit_compile` is the config's `xla`, `data_format` goes into
    `model_options`, `precision` is the config's (float32, bf16, fp16). UserError on
    mistakes."""
    from epsresnet_tf.config import resolve_config, validate_config
    from epsresnet_tf.gates import gate_choices

    if gate is not None and gate not in gate_choices():
        raise UserError(f"--gate must be one of {', '.join(gate_choices())}, got {gate!r}")
    changes = dict(
        arch=arch,
        gate=gate,
        batch_size=batch,
        epsilon=epsilon,
        xla=None if jit_compile is None else bool(jit_compile),
        precision=precision,
        **overrides,
    )
    if recipe is not None:
        from epsresnet_tf import recipes

        _, cfg = recipes.resolve(recipe, **changes)
    else:
        cfg = resolve_config({}, **changes)
    if data_format is not None:
        cfg["model_options"] = dict(cfg["model_options"], data_format=data_format)
        validate_config(cfg)
    return cfg


def build_training_step(
    cfg,
    *,
    num_classes=None,
    image_shape=None,
    strategy=None,
    monitor=True,
    fused_bn=True,
    steps_per_execution=1,
):
    """The training model `run_training` builds for `cfg`, through the loop's own
    `build_training_model` after the same seed and precision policy, for a dataset of `num_classes` classes and `image_shape` images (default: the
    config's dataset's). The returned model's `.net` is the network. Benchmark variants:
    `monitor=False` (ε-gate: the gates' monitors and the discarded-count average off),
    `fused_bn=False` (Keras's BatchNormalization), `steps_per_execution`. The global
    precision policy is restored afterwards (the layers keep theirs)."""
    import keras
    import tensorflow as tf

    from epsresnet_tf.config import dtype_policy, keras_precision, validate_config
    from epsresnet_tf.train.model import TrainingModel, build_training_model

    validate_config(cfg)
    if not monitor and cfg["gate"] != "eps":
        raise UserError("--no-monitor only applies to --gate eps")
    if steps_per_execution < 1:
        raise UserError(f"--steps-per-execution must be >= 1, got {steps_per_execution}")
    if num_classes is None or image_shape is None:
        from epsresnet_tf.data import datasets

        description = datasets.get(cfg["dataset"])
        num_classes = num_classes or description.num_classes
        image_shape = image_shape or description.image_shape

    def variant(net):  # the benchmark's variants of the loop's network
        if not monitor:
            disable_monitors(net)
        if not fused_bn:
            unfuse_batchnorm(net)

    # from here on, run_training's own sequence (train/loop.py): seed, precision, the build
    if cfg["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg["seed"])
    with keras_precision(dtype_policy(cfg)):
        model = build_training_model(
            cfg,
            num_classes,
            image_shape,
            strategy,
            net_hook=variant,
            model_class=TrainingModel if monitor else _quiet_training_model_class(),
            steps_per_execution=steps_per_execution,
        )
    return model


def close_blocks(net, fraction):
    """Close `fraction` of the net's ε-gates for good (ε = 1e9: T = 0 on any data), in a
    fixed pattern spread over the groups: block i of N closes where floor((i+1)·f) moves
    past floor(i·f). The closed block ids, in network order."""
    from epsresnet_tf.gates.registry import gate_by_block

    gates = list(gate_by_block(net).items())
    closed = [
        block
        for i, (block, _) in enumerate(gates)
        if int((i + 1) * fraction + 1e-9) != int(i * fraction + 1e-9)
    ]
    for block, layer in gates:
        if block in closed:
            layer.epsilon.assign(1e9)
    return closed


def num_classes_of(net):
    """Classes of a network's logits (the main head's where there is a side head)."""
    out = net.output
    return int((out["logits"] if isinstance(out, dict) else out).shape[-1])


def synthetic_batch(net, batch, seed=0):
    """A fixed (images, labels) batch of the network's input shape, as tf constants."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(net.input_shape[1:])
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    y = tf.constant(rng.integers(0, num_classes_of(net), size=(batch,), dtype=np.int32))
    return x, y


class StepTimer:
    """Runs training steps of one training model (from `build_training_step`) on one
    synthetic batch; `run(n)` does about n steps and returns seconds of steady-state time
    and the number of steps that time covers. `losses` holds the loop's `loss` metric
    after each step (or execution) of the last run: the mean since the run began, as
    `fit` logs it; `last_loss` its last value."""

    def __init__(self, model, batch, *, loop="fit", seed=0, x=None, y=None):
        import tensorflow as tf

        if loop not in LOOPS:
            raise UserError(f"--loop must be one of {', '.join(LOOPS)}, got {loop!r}")
        self.model, self.batch, self.loop = model, batch, loop
        self.spe = int(getattr(model, "steps_per_execution", 1) or 1)
        self.jit_compile = bool(model.jit_compile)
        if x is None or y is None:
            x, y = synthetic_batch(model.net, batch, seed)
        self.x, self.y = x, y
        self.losses, self.last_loss = [], None
        self.dataset = tf.data.Dataset.from_tensors((self.x, self.y)).repeat()
        if loop == "custom":
            self._setup_custom()

    @property
    def compute_dtypes(self):
        """The compute dtypes of the network's layers (a set: {"float32"}, or with
        "bfloat16"/"float16" under a mixed policy)."""
        return {layer.compute_dtype for layer in self.model.net.layers}

    # Keras fit, as `epsresnet train` drives the step ---------------------------------------
    def _run_fit(self, steps):
        import keras

        steps = max(steps, 2 * self.spe)
        steps -= steps % self.spe
        stamps, losses = [], []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                stamps.append((time.perf_counter(), batch))
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        self.model.fit(
            self.dataset,
            epochs=1,
            steps_per_epoch=steps,
            verbose=0,
            shuffle=False,
            callbacks=[Clock()],
        )
        self.losses = losses
        self.last_loss = losses[-1] if losses else None
        # Keras passes the index of the last step of each execution to on_train_batch_end.
        (t0, b0), (t1, b1) = stamps[0], stamps[-1]
        return t1 - t0, b1 - b0

    # a tf.function of our own around the same train_step -----------------------------------
    def _setup_custom(self):
        import tensorflow as tf

        model, spe = self.model, self.spe

        @tf.function(jit_compile=self.jit_compile)
        def step(x, y):
            logs = None
            for _ in range(spe):  # unrolled: steps_per_execution steps per call
                logs = model.train_step((x, y))
            return logs["loss"]

        self._step = step

    def _run_custom(self, steps):
        calls = max(1, steps // self.spe)
        self.model.reset_metrics()
        loss = self._step(self.x, self.y)  # not timed: the clock starts after it
        losses = [float(loss.numpy())]
        t0 = time.perf_counter()
        out = []
        for _ in range(calls):
            out.append(self._step(self.x, self.y))
        out[-1].numpy()  # the last step has finished
        seconds = time.perf_counter() - t0
        self.losses = losses + [float(v.numpy()) for v in out]
        self.last_loss = self.losses[-1]
        return seconds, calls * self.spe

    def run(self, steps):
        return self._run_fit(steps) if self.loop == "fit" else self._run_custom(steps)


def _checked(run, steps):
    """run(steps), with TensorFlow's CPU refusal of NCHW convolutions as a UserError."""
    import tensorflow as tf

    try:
        return run(steps)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
        if "NHWC" in str(err):
            raise UserError(
                "channels_first training has no TensorFlow CPU kernels (conv "
                "backprop supports NHWC only): use --jit, a GPU, or "
                "channels_last"
            ) from None
        raise


def _variant_config(v, *, recipe, batch, jit_compile, data_format, precision):
    return bench_config(
        v.get("arch"),
        v.get("gate", "none"),
        recipe=v.get("recipe", recipe),
        batch=batch,
        epsilon=v.get("epsilon"),
        jit_compile=bool(v.get("jit_compile", jit_compile)),
        data_format=data_format,
        precision=v.get("precision", precision),
        **v.get("config", {}),
    )


def build_variant(
    v,
    *,
    batch=128,
    warmup=3,
    loop=None,
    jit_compile=None,
    steps_per_execution=None,
    data_format=None,
    precision=None,
    input_shape=None,
    classes=None,
    fused_bn=True,
    recipe=None,
):
    """One variant (see measure_variants) built and warmed up: dict(timer=StepTimer,
    cfg=, stats=model_stats, opts=the loop settings, build_s=seconds)."""
    loop = loop or CPU_DEFAULTS["loop"]
    jit_compile = CPU_DEFAULTS["jit_compile"] if jit_compile is None else jit_compile
    spe = steps_per_execution or CPU_DEFAULTS["steps_per_execution"]
    data_format = data_format or CPU_DEFAULTS["data_format"]
    if batch < 1 or warmup < 0:
        raise UserError("batch must be >= 1 and warmup >= 0")
    from epsresnet_tf.config import global_batch_size
    from epsresnet_tf.models.describe import model_stats

    start = time.perf_counter()
    cfg = _variant_config(
        v,
        recipe=recipe,
        batch=batch,
        jit_compile=jit_compile,
        data_format=data_format,
        precision=precision,
    )
    opts = dict(
        loop=v.get("loop", loop),
        jit_compile=bool(cfg["xla"]),
        steps_per_execution=int(v.get("steps_per_execution", spe)),
    )
    model = build_training_step(
        cfg,
        num_classes=classes,
        image_shape=input_shape,
        monitor=v.get("monitor", True),
        fused_bn=fused_bn,
        steps_per_execution=opts["steps_per_execution"],
    )
    closed = close_blocks(model.net, v["closed"]) if v.get("closed") else []
    timer = StepTimer(model, global_batch_size(cfg, 1), loop=opts["loop"])
    fit_extra = opts["steps_per_execution"] if opts["loop"] == "fit" else 0
    _checked(timer.run, max(warmup, 1) + fit_extra)
    return dict(
        timer=timer,
        cfg=cfg,
        stats=model_stats(model.net),
        opts=opts,
        closed=closed,
        build_s=time.perf_counter() - start,
    )


def measure_variants(variants, *, steps=15, repeats=1, log=None, **shared):
    """Time several variants of the training step in one process, interleaved round by
    round (so slow drifts of a shared machine hit each alike). `variants` maps a label to
    dict(arch=, gate=, monitor=) and optionally epsilon=, precision=, recipe=, config=
    (more config overrides), loop=, jit_compile=, steps_per_execution= overriding the
    shared settings (`build_variant`'s keywords: batch, warmup, loop, jit_compile,
    steps_per_execution, data_format, precision, input_shape, classes, fused_bn, recipe;
    `input_shape`/`classes` default to the config's dataset's). Returns {label: result
    dict}; img_s is the median over `repeats` rounds of `steps` timed steps, after
    `warmup` untimed ones; img_s_runs has every round (the spread)."""
    if steps < 1 or repeats < 1:
        raise UserError("steps and repeats must be >= 1")
    built = {}
    for label, v in variants.items():
        built[label] = build_variant(v, **shared)
        if log:
            log(f"{label}: built and warmed up in {built[label]['build_s']:.1f} s")
    timers = {label: b["timer"] for label, b in built.items()}
    rates = {label: [] for label in variants}
    load_before = loadavg()
    for r in range(repeats):
        for label, timer in timers.items():
            seconds, done = timer.run(steps)
            rates[label].append(done * timer.batch / seconds)
            if log:
                log(f"round {r + 1}/{repeats} {label}: {rates[label][-1]:.1f} img/s")
    load_after = loadavg()
    out = {}
    for label, v in variants.items():
        out[label] = describe_variant(built[label], v, rates[label], steps, shared)
        out[label].update(load_before=load_before, load_after=load_after)
    return out


def describe_variant(built, v, rates, steps, shared):
    """The result dict of one built variant timed at `rates` img/s (one per round)."""
    cfg, timer = built["cfg"], built["timer"]
    img_s = statistics.median(rates)
    macs = built["stats"]["macs"]
    gflop_img = train_gflop_per_image(macs)
    peak = peak_gflops()
    return {
        "arch": cfg["arch"],
        "gate": cfg["gate"],
        "monitor": bool(v.get("monitor", True)) if cfg["gate"] == "eps" else None,
        "batch": timer.batch,
        "steps": steps,
        "warmup": shared.get("warmup", 3),
        "repeats": len(rates),
        **built["opts"],
        "data_format": cfg["model_options"].get("data_format", "channels_last"),
        "precision": cfg["precision"],
        "fused_bn": bool(shared.get("fused_bn", True)),
        "optimizer": cfg["optimizer"],
        "side_head": bool(cfg["side_head"]),
        "side_weight": cfg["side_weight"],
        "weight_decay": cfg["weight_decay"],
        "wd_decay_every": cfg["wd_decay_every"],
        "epsilon": cfg["epsilon"],
        "img_s": img_s,
        "img_s_best": max(rates),
        "img_s_runs": list(rates),
        "step_ms": 1000.0 * timer.batch / img_s,
        "macs": macs,
        "train_gflop_per_img": gflop_img,
        "gflop_s": img_s * gflop_img,
        "peak_gflop_s": peak,
        "peak_share": (img_s * gflop_img / peak) if peak else None,
        "final_loss": timer.last_loss,
    }


# --- the worker of `make bench`'s driver (benchmarks/bench_peer.py) ----------------------


def worker_handlers():
    """The ops of benchmarks/workers.py's protocol over this process's built variants:
    setup(name, spec) builds and warms up `build_variant(spec)` (spec: a variant dict
    plus build_variant's keywords), time(name, steps) runs it."""
    built = {}
    keywords = set(inspect.signature(build_variant).parameters) - {"v"}

    def setup(name, spec):
        shared = {k: v for k, v in spec.items() if k in keywords}
        if "input_shape" in shared:
            shared["input_shape"] = tuple(shared["input_shape"])
        variant = {k: v for k, v in spec.items() if k not in keywords}
        built[name] = b = build_variant(variant, **shared)
        cfg = b["cfg"]
        return {
            "build_s": b["build_s"],
            "macs": b["stats"]["macs"],
            "batch": b["timer"].batch,
            "arch": cfg["arch"],
            "gate": cfg["gate"],
            "precision": cfg["precision"],
            "monitor": bool(variant.get("monitor", True)) if cfg["gate"] == "eps" else None,
            "compute_dtypes": sorted(b["timer"].compute_dtypes),
            "closed": len(b["closed"]),
            "blocks": len(b["timer"].model.gates),
            "backward_skip": bool(cfg["backward_skip"]),
        }

    def timed(name, steps):
        timer = built[name]["timer"]
        seconds, done = timer.run(int(steps))
        return {"seconds": seconds, "steps": done, "loss": timer.last_loss}

    def info():
        return {"framework": "tensorflow", **versions()}

    return {"info": info, "setup": setup, "time": timed}


def serve_worker():
    """`bench_train.py --worker`: serve the driver's protocol on stdin/stdout."""
    import workers

    workers.serve(worker_handlers())
    return 0


def measure(arch, gate="none", *, monitor=True, epsilon=None, **kwargs):
    """One configuration; see measure_variants for the keyword arguments."""
    label = f"{arch}/{gate}"
    return measure_variants(
        {label: dict(arch=arch, gate=gate, monitor=monitor, epsilon=epsilon)}, **kwargs
    )[label]


# --- one configuration per process: `bench_train.py --one` --------------------------------


def _positive(value):
    n = int(value)
    if n < 1:
        raise ValueError(value)
    return n


def one_parser(prog="bench_train.py --one"):
    import argparse

    from epsresnet_tf.gates import gate_choices

    p = argparse.ArgumentParser(
        prog=prog,
        description="Time the training step `epsresnet train` runs (side head, weight-decay "
        "staircase, gate and monitors, TF1 momentum) on a synthetic batch after "
        "a warm-up; print images/s and achieved GFLOP/s. Defaults are the "
        "fastest combination measured on CPU. One process per configuration: "
        "oneDNN and thread settings only take effect at start-up.",
    )
    p.add_argument(
        "arch",
        nargs="?",
        default=None,
        help="architecture name, e.g. cifar-basic-110 (default: the recipe's, "
        "or the defaults' cifar-basic-110)",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="start from this recipe's config (experiments/NAME.json) instead of "
        "the defaults (cifar10-eps-110's)",
    )
    p.add_argument(
        "--gate", choices=gate_choices(), default="none", help="residual gate (default none)"
    )
    p.add_argument("--epsilon", type=float, default=None, help="ε of --gate eps")
    p.add_argument(
        "--no-monitor",
        action="store_true",
        help="with --gate eps: switch the gates' monitors and the discarded-count average off",
    )
    p.add_argument("--batch", type=_positive, default=128, help="batch size (default 128)")
    p.add_argument("--steps", type=_positive, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--repeats",
        type=_positive,
        default=1,
        help="timed rounds; the median is reported (default 1)",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=CPU_DEFAULTS["loop"],
        help="Keras fit (what `epsresnet train` does) or a tf.function of our own "
        f"around the same train_step (default {CPU_DEFAULTS['loop']})",
    )
    p.add_argument(
        "--jit",
        dest="jit",
        action="store_true",
        default=CPU_DEFAULTS["jit_compile"],
        help="XLA-compile the step (the config's xla)",
    )
    p.add_argument("--no-jit", dest="jit", action="store_false", help="no XLA")
    p.add_argument(
        "--steps-per-execution",
        type=_positive,
        default=CPU_DEFAULTS["steps_per_execution"],
        help=f"steps per compiled call (default {CPU_DEFAULTS['steps_per_execution']})",
    )
    p.add_argument(
        "--data-format",
        choices=("channels_last", "channels_first"),
        default=CPU_DEFAULTS["data_format"],
        help=f"conv layout (default {CPU_DEFAULTS['data_format']}; channels_first is for GPUs)",
    )
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="float32",
        help="the config's precision: float32, bf16 (mixed_bfloat16) or fp16 "
        "(mixed_float16, loss scaling); default float32",
    )
    p.add_argument(
        "--keras-bn",
        action="store_true",
        help="Keras's own BatchNormalization instead of the fused kernel the "
        "models use (to measure what fusing buys)",
    )
    p.add_argument(
        "--intra-threads",
        type=_positive,
        default=None,
        help="TensorFlow intra-op threads (default: TensorFlow's, = cores)",
    )
    p.add_argument(
        "--inter-threads",
        type=_positive,
        default=None,
        help="TensorFlow inter-op threads (default: TensorFlow's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (img_s, gflop_s, …)")
    return p


def run_one(args):
    """Measure the configuration of parsed `one_parser()` arguments and print it."""
    configure_threads(args.intra_threads, args.inter_threads)
    if args.gate != "eps" and args.no_monitor:
        raise UserError("--no-monitor only applies to --gate eps")
    result = measure(
        args.arch,
        args.gate,
        monitor=not args.no_monitor,
        epsilon=args.epsilon,
        recipe=args.recipe,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        loop=args.loop,
        jit_compile=args.jit,
        steps_per_execution=args.steps_per_execution,
        data_format=args.data_format,
        precision=args.precision,
        fused_bn=not args.keras_bn,
    )
    result.update(
        intra_threads=args.intra_threads,
        inter_threads=args.inter_threads,
        onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        **versions(),
    )
    if args.json:
        print(json.dumps(result))
        return result
    peak = (
        f", {100 * result['peak_share']:.0f}% of the {result['peak_gflop_s']:.0f} GFLOP/s FP32 peak"
        if result["peak_share"]
        else ""
    )
    print(
        f"{result['arch']} gate={args.gate}"
        + (" monitor=off" if args.no_monitor else "")
        + f" batch={args.batch}: {result['img_s']:.1f} img/s "
        f"({result['step_ms']:.0f} ms/step), {result['gflop_s']:.1f} GFLOP/s{peak} "
        f"[loop={result['loop']} jit={result['jit_compile']} "
        f"spe={result['steps_per_execution']} {result['data_format']}"
        + f" {args.precision}"
        + (" keras-bn" if args.keras_bn else "")
        + "]"
    )
    return result


def main_one(argv=None, prog="bench_train.py --one"):
    """`bench_train.py --one ...`: 0, or 2 with a one-line error on a user mistake."""
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
    args = one_parser(prog).parse_args(argv)
    try:
        run_one(args)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
