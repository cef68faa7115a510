"""PyTorch reference for the CPU training-speed target of issue 6 (not part of the package).

    $TORCH_PYTHON benchmarks/bench_torch_reference.py [--depth 110] [--batch 128]
                                                      [--steps 8] [--warmup 2] [--json]

Builds the same network as `epsresnet_tf` cifar-basic-DEPTH with gate none: a
pre-activation ResNet (He et al. 2016) with 3 groups of n = (D-2)/6 basic units at 16, 32,
64 channels, a 3x3 stem conv + BN-ReLU, the first unit taking the activated stem, the
parameter-free "option A" shortcut where shapes change (2x2 average pool, then zero
channels padded on both sides), a final BN-ReLU, global average pool and a 10-way dense
layer; bias-free convs, BN momentum 0.9 / eps 1e-5. It trains it on one synthetic batch
with SGD (momentum 0.9, weight decay 2e-4 on every parameter, as torch applies it), and
prints images/s after a warm-up. Run it with an interpreter that has torch (`make bench
TORCH_PYTHON=/path/to/python`); it is never installed into the project's venv.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        self.preactivated = preactivated  # the first unit gets the stem's BN-ReLU output
        self.bn1 = None if preactivated else nn.BatchNorm2d(cin, momentum=0.1, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = PoolPad(cout) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        r = x if self.bn1 is None else F.relu(self.bn1(x))
        r = self.conv1(r)
        r = self.conv2(F.relu(self.bn2(r)))
        s = x if self.shortcut is None else self.shortcut(x)
        return r + s


class CifarPreActResNet(nn.Module):
    def __init__(self, depth=110, classes=10):
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
        self.units = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(64, momentum=0.1, eps=1e-5)
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.units(x)
        x = F.relu(self.bn(x))
        return self.fc(x.mean((2, 3)))


def forward_macs(depth):
    """Forward MACs per image of cifar-basic-DEPTH (the same count as `epsresnet describe`)."""
    n = (depth - 2) // 6
    macs = 32 * 32 * 3 * 3 * 3 * 16
    for g, (hw, w) in enumerate(((32, 16), (16, 32), (8, 64))):
        cin = 16 if g == 0 else w // 2
        macs += hw * hw * 9 * cin * w + hw * hw * 9 * w * w  # the group's first unit
        macs += (n - 1) * 2 * hw * hw * 9 * w * w
    return macs + 64 * 10


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument(
        "--channels-last", action="store_true", help="torch.channels_last memory format"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CifarPreActResNet(args.depth)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    seconds = time.perf_counter() - start
    img_s = args.steps * args.batch / seconds
    gflop_img = 6 * forward_macs(args.depth) / 1e9
    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "depth": args.depth,
        "batch": args.batch,
        "steps": args.steps,
        "threads": threads,
        "channels_last": args.channels_last,
        "img_s": img_s,
        "gflop_s": img_s * gflop_img,
        "final_loss": loss,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"PyTorch {torch.__version__} cifar-basic-{args.depth} batch {args.batch}: "
            f"{img_s:.1f} img/s, {img_s * gflop_img:.1f} GFLOP/s ({threads} threads)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
