"""The papers' published numbers that `make reproduce` and `make reproduce-gpu` set beside
their own: one place, copied from the four papers' text and tables (figures carry no
numbers in the text; those claims say "figure only").

Every number is as printed (percentages as percent, parameters in millions); the keys say
which table or sentence it is from.
"""

from __future__ import annotations

#: ShaResNet (Boulch 2018) Table 1: (arch, classes, original M, shared M, printed decrease %,
#: independent convolutions original, shared).
SHARESNET_TABLE1 = (
    ("cifar-bottleneck-164", 10, 1.70, 0.93, 45, 164, 113),
    ("wrn-40-4", 10, 8.95, 5.85, 35, 40, 25),
    ("wrn-28-10", 100, 36.54, 26.86, 26, 28, 19),
    ("imagenet-34", 1000, 21.8, 13.6, 37, 34, 20),
    ("imagenet-50", 1000, 25.6, 20.5, 20, 50, 38),
    ("imagenet-101", 1000, 44.5, 29.4, 33, 101, 72),
    ("imagenet-152", 1000, 60.2, 36.8, 39, 152, 106),
)

#: He et al. 2016 Tables 3–4: parameters (M) of the CIFAR nets, as printed ("1.7M").
HE_PARAMS = (
    ("cifar-basic-110", 10, 1.7),
    ("cifar-bottleneck-164", 10, 1.7),
    ("cifar-bottleneck-1001", 10, 10.2),
    ("cifar-basic-1202", 10, 19.4),
)

#: ε-ResNet §4 "Number of layers": residual blocks of the CIFAR nets of each depth.
EPS_BLOCKS = (
    ("cifar-basic-110", 54),
    ("cifar-basic-200", 99),
    ("cifar-basic-500", 249),
    ("cifar-basic-752", 375),
)

#: Savarese et al. Table 1: MNIST test error (%) of the fully connected nets, by d.
GATES_MNIST_ERROR = {
    50: {"plain": 60.37, "res": 1.62, "plain-gated": 1.36, "res-gated": 1.48},
    100: {"plain": 90.20, "res": 1.50, "plain-gated": 1.29, "res-gated": 1.26},
}

#: Savarese et al. Table 2: mean k of the gated nets, by d.
GATES_MNIST_MEAN_K = {
    50: {"plain-gated": 0.46, "res-gated": 1.04},
    100: {"plain-gated": 0.41, "res-gated": 0.67},
}

#: Savarese et al. §3.1: their MNIST training (60,000 images, batch 128, 100 epochs).
GATES_MNIST_TRAINING = {"images": 60000, "batch": 128, "epochs": 100}

#: He et al. 2016 Table 3: CIFAR test error (%), original and pre-activation units.
HE_TABLE3 = (
    ("cifar10", "cifar-basic-110", 6.61, 6.37),
    ("cifar10", "cifar-bottleneck-164", 5.93, 5.46),
    ("cifar10", "cifar-bottleneck-1001", 7.61, 4.92),
    ("cifar100", "cifar-bottleneck-164", 25.16, 24.33),
    ("cifar100", "cifar-bottleneck-1001", 27.82, 22.71),
)

#: ε-ResNet, numbers in the text: Fig. 1 (CIFAR-100, 752 layers), §4 ImageNet, the ε used.
EPS_RESNET = {
    "cifar100_752": {"layer_compression": 3.2, "error_full": 24.8, "error_reduced": 23.8},
    "imagenet_discarded_percent": (20.12, 25.60, 36.23),
    "epsilon": {"cifar": 2.5, "svhn": 1.5, "imagenet": (1.8, 2.1)},
    "best_param_reduction_percent": 80,
    "epochs": {"cifar_eps": 1000, "cifar_base": 200, "svhn_eps": 150, "svhn_base": 80},
}

#: Savarese et al. Tables 3–5: CIFAR test error (%), original and gated.
GATES_CIFAR = (
    ("cifar10", "ResNet n=5 (32 layers)", "gates-cifar10-resnet-32", 7.16, 6.67),
    ("cifar10", "WRN (4,10)", "gates-cifar10-wrn-28-10", 4.00, 3.82),
    ("cifar10", "WRN (4,10) + dropout", "gates-cifar10-wrn-28-10-dropout", 3.89, 3.65),
    ("cifar100", "WRN (4,10)", "gates-cifar100-wrn-28-10", 19.25, 18.89),
    ("cifar100", "WRN (4,10) + dropout", "gates-cifar100-wrn-28-10-dropout", 18.85, 18.27),
)

#: ShaResNet Table 2: top-1 error (%), original and shared. The CIFAR rows of the table
#: print accuracies under "error"; they are converted here (94.54 -> 5.46).
SHARESNET_TABLE2 = (
    ("cifar10", "ResNet-164", "sharesnet-cifar10-164", 5.46, 6.20),
    ("cifar10", "WRN-40-4", "sharesnet-cifar10-wrn-40-4", 4.17, 5.10),
    ("cifar100", "WRN-28-10 + dropout", "sharesnet-cifar100-wrn-28-10", 20.0, 20.2),
)
