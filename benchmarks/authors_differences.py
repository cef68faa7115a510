"""Measurements behind rows of docs/semantics.md §12 (the authors' behaviour vs ours).

    .venv/bin/python benchmarks/authors_differences.py resets [--seeds 10] [--flicker 0]
    .venv/bin/python benchmarks/authors_differences.py epoch-composition [--epochs 12]
    .venv/bin/python benchmarks/authors_differences.py val-order RUN_DIR [--shuffles 100]

`resets`: how many adaptive lr resets the authors' rule (tolerance 0) and ours
(`reset_tolerance` 0.01) give on the authors' CIFAR-100 run: 1,000 epochs of 50,000 // 128 =
390 steps (cifarEpsilonResnet.py:41, :178, :188), the statistic one float32 tensorpack
moving average of the per-step integer discarded count (cifarEpsilonResnet.py:132-135;
decay 0.95 with num_updates = global step, from 0), read at each epoch's end by
LearningRateSetter.py's rule (restated below from the file, with its lines), schedules
cifarEpsilonResnet.py:201-204, threshold 1, window 1. The trajectory of the count is given,
not simulated from training (open loop: it does not react to the lr): blocks go for good
one by one at random steps; `--flicker S` makes each block closed on a linearly growing
fraction of the S steps before it goes (a block whose max|F| sits at ε). Scenarios:
  - "752": the paper's CIFAR-100 752-layer net, 375 blocks, 3.2x layer compression, i.e.
    about 258 blocks gone (752 / 3.2 = 235 layers = 2 · 116.5 blocks + 2), going at
    uniformly random steps of epochs 1-700;
  - "isolated": 20 blocks, one every 20 epochs from epoch 10, each at a random step of its
    epoch (no two in one epoch: the plain "one more block" case).
The package's own rule (epsresnet_tf.train.schedules.AdaptiveResetSchedule) is run on the
same histories with tolerance 0 and 0.01; with tolerance 0 it must agree with the
restatement (checked).

`epoch-composition`: how often each training image appears in one epoch of the authors'
input: tensorpack 0.2.0's PrefetchData(ds, 3, 2) (cifarEpsilonResnet.py:180) runs 2
processes, each looping over its own shuffle of the data forever, into one queue; the
trainer takes `dataflow.size()` = 390 batches an epoch from it, whichever process made them
(simulated: each batch from a random process). SVHN: PrefetchData(ds, 5, 5)
(svhnEpsilonResnet.py:61); ImageNet: PrefetchDataZMQ(ds, 20) over single images
(imagenetEpsilonResnet.py:236), 5,000 steps of 256. Ours (data/pipeline.py
epochs_dataset): epoch e is pass e's permutation when an epoch is one pass.

`val-order RUN_DIR`: the trained net's validation error with batches in file order (ours,
data/pipeline.py make_sources) and with the evaluation split shuffled afresh, as tensorpack
0.2.0's Cifar10('test') / SVHNDigit('test') (shuffle=True by default) did on every
InferenceRunner pass (cifarEpsilonResnet.py:161, :187, :198), at the run's batch size: with
batch-scope ε-gates a batch's composition can change T. Also at batch 1 (per image) and at
the whole split in one batch, for scale.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

F32 = np.float32

# cifarEpsilonResnet.py:202-203 (CIFAR-10 and CIFAR-100 alike)
CIFAR_STANDARD = [(0, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)]
CIFAR_ADAPTIVE = [(0, 0.1), (41, 0.01), (61, 0.001), (150, 0.0002)]
CIFAR_STEPS = 50000 // 128  # dataset size // BATCH_SIZE (cifarEpsilonResnet.py:41, :178)
CIFAR_EPOCHS = 1000  # MAX_EPOCH, cifarEpsilonResnet.py:188


# --- the statistic ---------------------------------------------------------------------


def epoch_end_averages(counts, steps_per_epoch):
    """The moving summary of the per-step counts at each epoch's end, in float32:
    TF1 ExponentialMovingAverage(0.95, num_updates=global step), not debiased, from 0:
    d = min(0.95, (1 + n) / (10 + n)); avg -= (avg - x) * (1 - d). Once the average has
    stalled (an update leaves it unchanged at d = 0.95) it stays until the count changes, so
    the loop jumps to the next change."""
    counts = np.asarray(counts)
    total = len(counts)
    out = np.empty(total // steps_per_epoch, F32)
    changes = list(np.flatnonzero(np.diff(counts)) + 1) + [total]
    one, ten, decay = F32(1.0), F32(10.0), F32(0.95)
    avg, t, ci = F32(0.0), 0, 0
    while t < total:
        x, n = F32(counts[t]), F32(t)
        d = min(decay, (one + n) / (ten + n))
        new = F32(avg - (avg - x) * (one - d))
        stalled = new == avg and d == decay
        avg = new
        t += 1
        if t % steps_per_epoch == 0:
            out[t // steps_per_epoch - 1] = avg
        if stalled:
            while changes[ci] < t:
                ci += 1
            nxt = changes[ci]
            out[t // steps_per_epoch : nxt // steps_per_epoch] = avg  # epochs ending in (t, nxt]
            t = max(t, nxt)
    return out


# --- the authors' rule, restated from LearningRateSetter.py ------------------------------


def authors_resets(history, init_schedule, updated_schedule, threshold=1, last_k=1, epochs=None):
    """(epochs after which LearningRateSetter resets the lr, the lr of each epoch). tensorpack
    calls it before training (epoch_num 0, empty history) and after each epoch (epoch_num =
    finished epochs, history = their values, each a float32 summary value read as a Python
    float); a returned value is set, None leaves the lr as it is."""
    epochs = len(history) if epochs is None else epochs
    last_changed_epoch = 0  # LearningRateSetter.py:50
    schedule = sorted(init_schedule)  # :52-53
    lr = 0.1  # get_scalar_var('learning_rate', 0.1), cifarEpsilonResnet.py:152
    resets, lrs = [], []
    for epoch_num in range(epochs):  # the decision after the last epoch trains nothing
        hist = [float(v) for v in history[:epoch_num]]
        value = None
        # :61-67: too few values, or too soon after a change: follow the schedule
        if len(hist) < last_k + 1 or epoch_num - last_changed_epoch < last_k:
            value = next((v for e, v in schedule if e == epoch_num), None)
        else:
            hist = hist[-last_k - 1 :]  # :68
            hist_first, hist_max = hist[0], max(hist)  # :72-73
            if hist_max < hist_first + threshold:  # :74, "not increase enough"
                value = next((v for e, v in schedule if e == epoch_num), None)  # :75-79
            else:
                last_changed_epoch = epoch_num  # :81
                schedule = [(a + epoch_num, b) for a, b in sorted(updated_schedule)]  # :82-83
                value = schedule[0][1]  # :84
                resets.append(epoch_num)
        lr = lr if value is None else value
        lrs.append(lr)  # the lr of epoch epoch_num + 1
    return resets, lrs


def package_resets(history, tolerance, epochs=None):
    from epsresnet_tf.train.schedules import AdaptiveResetSchedule

    epochs = len(history) if epochs is None else epochs
    rule = AdaptiveResetSchedule(CIFAR_STANDARD, CIFAR_ADAPTIVE, 1.0, 1, tolerance)
    for e in range(1, epochs):
        rule.lr_for_epoch(e, [float(v) for v in history[:e]])
    return list(rule.resets)


# --- trajectories ------------------------------------------------------------------------


def trajectory(scenario, rng, steps=CIFAR_STEPS, epochs=CIFAR_EPOCHS, flicker=0):
    """Per-step integer discarded counts: each block closed for good from its going step
    on, and (flicker > 0) closed on each of the `flicker` steps before with a probability
    growing linearly from 0 to 1."""
    if scenario == "752":
        going = np.sort(rng.integers(1 * steps, 700 * steps, 258))
    elif scenario == "isolated":
        going = np.array([e * steps + rng.integers(0, steps) for e in range(10, 410, 20)])
    else:
        raise ValueError(scenario)
    counts = np.zeros(steps * epochs, np.int32)
    for g in going:
        counts[g:] += 1
        if flicker:
            lo = max(g - flicker, 0)
            p = np.linspace(0.0, 1.0, g - lo, endpoint=False)
            counts[lo:g] += rng.random(g - lo) < p
    return counts, going


def _resets(args):
    rows = []
    for scenario in ("isolated", "752"):
        got = {"authors": [], "0": [], "0.01": [], "epochs with a block going": []}
        for seed in range(args.seeds):
            counts, going = trajectory(scenario, np.random.default_rng(seed), flicker=args.flicker)
            hist = epoch_end_averages(counts, CIFAR_STEPS)
            authors, _ = authors_resets(hist, CIFAR_STANDARD, CIFAR_ADAPTIVE)
            exact = package_resets(hist, 0.0)
            assert exact == authors, (scenario, seed, exact, authors)
            got["authors"].append(len(authors))
            got["0"].append(len(exact))
            got["0.01"].append(len(package_resets(hist, 0.01)))
            got["epochs with a block going"].append(len(set(going // CIFAR_STEPS)))
        rows.append((scenario, {k: (float(np.mean(v)), min(v), max(v)) for k, v in got.items()}))
    print(
        f"CIFAR-100 schedule, {CIFAR_EPOCHS} epochs of {CIFAR_STEPS} steps, "
        f"{args.seeds} seeds, flicker {args.flicker} steps: resets (mean, min-max)"
    )
    for scenario, stats in rows:
        line = ", ".join(f"{k}: {m:.1f} ({lo}-{hi})" for k, (m, lo, hi) in stats.items())
        print(f"  {scenario}: {line}")
    if args.json:
        print(json.dumps(dict(rows)))


# --- epoch composition -------------------------------------------------------------------


def composition(images, batch, steps, procs, epochs, per_image, rng):
    """Fractions of the images seen 0, 1, 2, 3+ times in the last of `epochs` epochs of
    `steps` batches, drawn from `procs` processes each looping over its own shuffles
    (per_image: the processes yield images and batching follows, PrefetchDataZMQ)."""
    unit = 1 if per_image else batch
    per_pass = images // unit  # units a pass (BatchData(remainder=False) drops the rest)
    units = epochs * steps * batch // unit
    source = rng.integers(procs, size=units)  # which process made each unit in the queue
    rank = np.zeros(units, np.int64)  # its index in that process's own stream
    for p in range(procs):
        mine = source == p
        rank[mine] = np.arange(int(mine.sum()))
    first = (epochs - 1) * steps * batch // unit
    seen = np.zeros(images, np.int64)
    for p in range(procs):
        want = rank[first:][source[first:] == p]
        if not len(want):
            continue
        passes = {}
        for q in np.unique(want // per_pass):  # the process's own shuffle of pass q
            passes[q] = rng.permutation(images)[: per_pass * unit].reshape(per_pass, unit)
        for q, order in passes.items():
            idx = want[want // per_pass == q] % per_pass
            np.add.at(seen, order[idx].ravel(), 1)
    return [float(np.mean(seen == k)) for k in (0, 1, 2)] + [float(np.mean(seen >= 3))]


def _composition(args):
    rng = np.random.default_rng(0)
    print("fraction of the images seen 0 / 1 / 2 / 3+ times in one epoch (the authors' input)")
    for name, images, batch, steps, procs, per_image in (
        ("CIFAR (PrefetchData 2 procs)", 50000, 128, 390, 2, False),
        ("SVHN (PrefetchData 5 procs)", 604388, 128, 4721, 5, False),
        ("ImageNet (PrefetchDataZMQ 20 procs, 5,000 x 256)", 1281167, 256, 5000, 20, True),
    ):
        frac = composition(images, batch, steps, procs, args.epochs, per_image, rng)
        print(f"  {name}: " + " / ".join(f"{f:.3f}" for f in frac))
    print(
        "  ours (one pass per epoch, a fresh permutation, the remainder dropped): CIFAR "
        f"{50000 % 128} of 50,000 unseen, the rest once"
    )


# --- validation order --------------------------------------------------------------------


def _val_order(args):
    import keras

    from epsresnet_tf.data import datasets
    from epsresnet_tf.data.pipeline import eval_batches
    from epsresnet_tf.evaluate import error_rates
    from epsresnet_tf.layers import gate_layers
    from epsresnet_tf.outputs import load_net
    from epsresnet_tf.runfolder import read_run

    run = read_run(Path(args.run))
    cfg = json.loads((Path(args.run) / "config.json").read_text())
    model = load_net(Path(args.run) / "model.keras")
    b = args.batch or cfg["batch_size"]
    split = datasets.get(run.dataset).eval_split
    data = list(eval_batches(run.dataset, split, args.data_dir, b, seed=run.seed, mean=run.mean))
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    n = len(y)

    def wrong(batches):
        return round(error_rates(model, batches)["top1_error"] * n)

    def batched(order, size):
        return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, n, size)]

    gates = gate_layers(model)
    probe = keras.Model(model.inputs, [g.input for g in gates])
    eps = [float(g.epsilon.numpy()) for g in gates]

    def mixed(batches):
        """Blocks closed (T = 0) on some batches and open on others."""
        closed = np.zeros(len(gates))
        for xb, _ in batches:
            peaks = [float(np.max(np.abs(f))) for f in probe(xb, training=False)]
            closed += [p <= e for p, e in zip(peaks, eps)]
        return int(np.sum((closed > 0) & (closed < len(batches))))

    print(f"{args.run}: {n} {split} images, batch {b}")
    file_order = wrong(data)
    print(
        f"  blocks closed on some batches only: file order {mixed(data)}, shuffles "
        + str([mixed(batched(np.random.default_rng(s).permutation(n), b)) for s in range(5)])
        + f" of {len(gates)}"
    )
    shuffled = Counter(
        wrong(batched(np.random.default_rng(s).permutation(n), b)) for s in range(args.shuffles)
    )
    print(f"  file order: {file_order} wrong ({100 * file_order / n:.2f}%)")
    spread = ", ".join(f"{k} wrong ({100 * k / n:.2f}%) x{v}" for k, v in sorted(shuffled.items()))
    mean = sum(k * v for k, v in shuffled.items()) / args.shuffles
    print(f"  {args.shuffles} shuffles: {spread}; mean {100 * mean / n:.2f}%")
    one = wrong(batched(np.arange(n), 1))
    print(f"  batch 1 (per image): {one} wrong ({100 * one / n:.2f}%)")
    whole = wrong([(x, y)])
    print(f"  the whole split in one batch: {whole} wrong ({100 * whole / n:.2f}%)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("resets")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--flicker", type=int, default=0, help="steps of flicker before a block goes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_resets)
    p = sub.add_parser("epoch-composition")
    p.add_argument("--epochs", type=int, default=12, help="the epoch measured is the last")
    p.set_defaults(fn=_composition)
    p = sub.add_parser("val-order")
    p.add_argument("run")
    p.add_argument("--shuffles", type=int, default=100)
    p.add_argument("--batch", type=int, default=None, help="default: the run's batch size")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(fn=_val_order)
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
