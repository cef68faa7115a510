"""Where a training step's time goes, by ablation (the numbers behind docs/PROFILE.md).

    .venv/bin/python benchmarks/profile_train.py [--arch cifar-basic-56] [--steps 4]
                                                 [--repeats 3] [--jit both|on|off]

For one network at batch 128 on a synthetic batch, built as `epsresnet train` builds it
(benchmarks/trainstep.py `build_training_step`: the loop's TrainingModel with the side
head, the weight-decay staircase, the ε-gate and its monitors, TF1 momentum), times
(interleaved round by round, best of `repeats`) the following compiled functions:

  full      the loop's `TrainingModel.train_step`: forward + backward + TF1-momentum
            update + monitors and metrics (the training step)
  grads     forward + backward of the same loss (cross-entropy + side head + staircase
            weight decay), gradients not applied
  fwd_train that loss with training=True (batch statistics, monitor updates)
  fwd_infer that loss with training=False
  conv_only the same convolutions in a plain chain (no BN, ReLU, shortcuts, gates, side
            head): forward + backward + Keras SGD-momentum update; the floor the
            convolutions set
  full_keras_bn, fwd_train_keras_bn
            the same network with Keras's own (unfused) BatchNormalization instead of
            the fused kernel the models use

Differences give the optimizer's share (full - grads), the backward pass (grads -
fwd_train) and the non-convolution work (full - conv_only). Each is reported as ms/step,
img/s and GFLOP/s where the FLOPs are 6 x forward MACs (or 2 x for forward-only).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.setrecursionlimit(max(sys.getrecursionlimit(), 30000))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # trainstep.py beside this file

import trainstep  # noqa: E402


def conv_chain(arch, data_format="channels_last"):
    """The convolutions of cifar-basic-D in a plain chain, same shapes and strides."""
    import keras

    depth = int(arch.rsplit("-", 1)[1])
    n = (depth - 2) // 6
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    for g, w in enumerate((16, 32, 64)):
        for b in range(n):
            stride = 2 if (g and not b) else 1
            x = keras.layers.Conv2D(w, 3, strides=stride, padding="same", use_bias=False)(x)
            x = keras.layers.Conv2D(w, 3, padding="same", use_bias=False)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x))


def plain_step(model, x, y, jit):
    """forward + backward + Keras SGD-momentum update of a plain keras.Model."""
    import keras
    import tensorflow as tf

    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    opt.build(model.trainable_variables)
    lossf = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit)
    def full():
        with tf.GradientTape() as tape:
            loss = lossf(y, tf.cast(model(x, training=True), tf.float32))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return full


def functions(model, x, y, jit):
    """Compiled pieces of the loop's training step; `model` from build_training_step."""
    import tensorflow as tf
    from keras import ops

    net = model.net

    def loss_of(training=True):
        # train_step's loss (train/loop.py): _forward's cross-entropy + side head, plus
        # the weight decay times the staircase factor
        loss = model._forward(x, y, training)[0]
        if net.losses:
            loss = loss + model.wd_scale() * ops.cast(ops.sum(ops.stack(net.losses)), "float32")
        return loss

    @tf.function(jit_compile=jit)
    def full():
        return model.train_step((x, y))["loss"]

    @tf.function(jit_compile=jit)
    def grads():
        with tf.GradientTape() as tape:
            loss = loss_of()
        g = tape.gradient(loss, net.trainable_variables)
        return tf.add_n([tf.reduce_sum(t) for t in g])

    @tf.function(jit_compile=jit)
    def fwd_train():
        return loss_of(True)

    @tf.function(jit_compile=jit)
    def fwd_infer():
        return loss_of(False)

    return {"full": full, "grads": grads, "fwd_train": fwd_train, "fwd_infer": fwd_infer}


def timed(fn, steps):
    fn().numpy()
    t = time.perf_counter()
    for _ in range(steps):
        out = fn()
    out.numpy()
    return (time.perf_counter() - t) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cifar-basic-56")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jit", choices=("both", "on", "off"), default="both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from epsresnet_tf.models.describe import model_stats

    jits = {"both": (True, False), "on": (True,), "off": (False,)}[args.jit]
    cfg = trainstep.bench_config(args.arch, "eps", batch=args.batch)
    model = trainstep.build_training_step(cfg)
    unfused = trainstep.build_training_step(cfg, fused_bn=False)
    chain = conv_chain(args.arch)
    macs = model_stats(model.net)["macs"]
    x, y = trainstep.synthetic_batch(model.net, args.batch)
    fns = {}
    for jit in jits:
        tag = "xla" if jit else "graph"
        for name, fn in functions(model, x, y, jit).items():
            fns[f"{tag}/{name}"] = fn
        fns[f"{tag}/conv_only"] = plain_step(chain, x, y, jit)
        keras_bn = functions(unfused, x, y, jit)
        fns[f"{tag}/full_keras_bn"] = keras_bn["full"]
        fns[f"{tag}/fwd_train_keras_bn"] = keras_bn["fwd_train"]
    for fn in fns.values():  # trace, compile, warm up
        fn().numpy()
        fn().numpy()
    best = {name: float("inf") for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, args.steps))
    peak = trainstep.peak_gflops()
    result = {
        "arch": args.arch,
        "batch": args.batch,
        "macs": macs,
        "peak_gflop_s": peak,
        "load": trainstep.loadavg(),
        "ms": {k: 1000 * v for k, v in best.items()},
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{args.arch}, batch {args.batch}, forward {macs / 1e6:.1f} MMAC/img, "
        f"peak {peak:.1f} GFLOP/s, load {result['load']}"
    )
    print(f"{'function':22s} {'ms/step':>8s} {'img/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for name, s in best.items():
        flop = (2 if "fwd" in name else 6) * macs * args.batch
        print(
            f"{name:22s} {1000 * s:8.1f} {args.batch / s:8.1f} {flop / s / 1e9:8.1f} "
            f"{100 * flop / s / 1e9 / peak:6.0f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
