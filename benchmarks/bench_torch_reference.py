"""The PyTorch peer of `make bench` (not part of the package; its own venv, `make bench-peer`).

    benchmarks/.venv-peer/bin/python benchmarks/bench_torch_reference.py [--depth 110]
        [--batch 128] [--steps 8] [--warmup 2] [--channels-last] [--compile] [--bf16]
        [--json]
    benchmarks/.venv-peer/bin/python benchmarks/bench_torch_reference.py --worker
        (driven by benchmarks/bench_peer.py through benchmarks/workers.py's protocol)

The network is `epsresnet_tf`'s cifar-basic-DEPTH with gate none, as `epsresnet train`
builds it: a pre-activation ResNet (He et al. 2016) with 3 groups of n = (D-2)/6 basic
units at 16, 32, 64 channels; a 3x3 stem conv + BN-ReLU whose output the first unit takes
as it is; the parameter-free "option A" shortcut where shapes change (2x2 average pool,
zero channels padded on both sides); a final BN-ReLU, global average pool and 10-way FC;
bias-free convs; and the side head (BN-ReLU, pool, FC) after unit ⌊3n/2⌋, whose
cross-entropy enters the loss with weight 0.1. The optimizer is SGD with momentum 0.9
(torch's form, v = m v + g, w -= lr v: TF1's MomentumOptimizer at a constant lr) and
weight decay 2e-4 on the conv and FC kernels only, as the project's L2(wd/2) regularizer
gives (docs/semantics.md §6). Differences from ours, none of them in the convolutions:
no ε-gate (the peer rows compare with our gate-none rows), no weight-decay staircase
(one multiply), no discarded-count average.

Settings of PyTorch at its fastest on a CPU: `--channels-last` (NHWC, what oneDNN's
convolutions want), `--compile` (torch.compile, inductor), `--bf16` (torch.autocast
bfloat16 around the forward pass and the loss; weights and optimizer state float32).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workers  # noqa: E402  (the driver's protocol)

SIDE_WEIGHT = 0.1
WEIGHT_DECAY = 2e-4


class PoolPad(nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x):
        x = F.avg_pool2d(x, 2, 2)
        missing = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, missing // 2, missing - missing // 2))


class PreActBasic(nn.Module):
    def __init__(self, cin, cout, stride, preactivated):
        super().__init__()
        self.bn1 = None if preactivated else nn.BatchNorm2d(cin, momentum=0.1, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = PoolPad(cout) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        r = x if self.bn1 is None else F.relu(self.bn1(x))
        r = self.conv2(F.relu(self.bn2(self.conv1(r))))
        return r + (x if self.shortcut is None else self.shortcut(x))


class Head(nn.Module):
    """BN-ReLU, global average pool, FC: the main and the side classifier."""

    def __init__(self, channels, classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, momentum=0.1, eps=1e-5)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


class CifarPreActResNet(nn.Module):
    def __init__(self, depth=110, classes=10, side_head=True):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16, momentum=0.1, eps=1e-5)
        units, cin = [], 16
        for g, width in enumerate((16, 32, 64)):
            for b in range(n):
                stride = 2 if (g > 0 and b == 0) else 1
                units.append(PreActBasic(cin, width, stride, preactivated=(g == 0 and b == 0)))
                cin = width
        self.side_at = (3 * n) // 2 if side_head else None  # epsresnet_tf.blocks.side_head_index
        self.units = nn.ModuleList(units)
        self.side = Head(32, classes) if side_head else None
        self.head = Head(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        side = None
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i == self.side_at:
                side = self.side(x)
        return self.head(x), side


def forward_macs(depth, side_head=True):
    """Forward MACs per image of cifar-basic-DEPTH (the count `epsresnet describe` gives)."""
    n = (depth - 2) // 6
    macs = 32 * 32 * 3 * 3 * 3 * 16
    for g, (hw, w) in enumerate(((32, 16), (16, 32), (8, 64))):
        cin = 16 if g == 0 else w // 2
        macs += hw * hw * 9 * cin * w + hw * hw * 9 * w * w  # the group's first unit
        macs += (n - 1) * 2 * hw * hw * 9 * w * w
    return macs + 64 * 10 + (32 * 10 if side_head else 0)


class Variant:
    """One configuration of the peer: network, batch, optimizer, compiled step."""

    def __init__(self, depth=110, batch=128, channels_last=True, compile=False, bf16=False, seed=0):
        torch.manual_seed(seed)
        self.batch, self.depth, self.bf16 = batch, depth, bf16
        self.settings = dict(channels_last=channels_last, compile=compile, bf16=bf16)
        model = CifarPreActResNet(depth)
        x = torch.randn(batch, 3, 32, 32)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x, self.y = x, torch.randint(0, 10, (batch,))
        decay = [
            p for name, p in model.named_parameters() if name.endswith("weight") and p.ndim > 1
        ]
        rest = [p for name, p in model.named_parameters() if not any(p is d for d in decay)]
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0}],
            lr=0.1,
            momentum=0.9,
        )
        model.train()
        self.model = model
        self.forward = torch.compile(model) if compile else model

    def loss(self):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits, side = self.forward(self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            if side is not None:
                loss = loss + SIDE_WEIGHT * F.cross_entropy(side.float(), self.y)
        return loss

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss

    def run(self, steps):
        """(seconds, steps, last loss) of `steps` steps; each step ends before the next."""
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        value = float(loss.item())
        return time.perf_counter() - start, steps, value


def info():
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": sys.version.split()[0],
    }


def worker_handlers():
    """The protocol's ops (benchmarks/workers.py) over a dict of built variants."""
    built = {}

    def setup(name, spec):
        spec = dict(spec)
        warmup = int(spec.pop("warmup", 2))
        start = time.perf_counter()
        variant = Variant(**spec)
        variant.run(max(warmup, 1))  # compilation, oneDNN primitive creation
        built[name] = variant
        return {
            "build_s": time.perf_counter() - start,
            "macs": forward_macs(variant.depth),
            "batch": variant.batch,
            **variant.settings,
        }

    def timed(name, steps):
        seconds, done, loss = built[name].run(int(steps))
        return {"seconds": seconds, "steps": done, "loss": loss}

    return {"info": lambda: info(), "setup": setup, "time": timed}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help="serve the driver's protocol")
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--bf16", action="store_true", help="autocast bfloat16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    if args.worker:
        workers.serve(worker_handlers())
        return 0
    variant = Variant(args.depth, args.batch, args.channels_last, args.compile, args.bf16)
    variant.run(max(args.warmup, 1))
    seconds, steps, loss = variant.run(args.steps)
    img_s = steps * args.batch / seconds
    gflop_img = 6 * forward_macs(args.depth) / 1e9
    result = {
        **info(),
        "depth": args.depth,
        "batch": args.batch,
        "steps": steps,
        **variant.settings,
        "img_s": img_s,
        "gflop_s": img_s * gflop_img,
        "final_loss": loss,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"PyTorch {torch.__version__} cifar-basic-{args.depth} batch {args.batch} "
            f"{variant.settings}: {img_s:.1f} img/s, {img_s * gflop_img:.1f} GFLOP/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
