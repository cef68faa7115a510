"""The reproduction's pieces, as data: for each claim of the papers that can be tested on
the data of this machine, the claim, the paper, the runs, what is measured, the verdict rule
and what a full test would take. `make reproduce-<key>` runs one piece; `make reproduce`
runs `ORDER` (every piece's steps, cheapest first).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from epsresnet_tf.errors import UserError
from epsresnet_tf.reproduce import measure
from epsresnet_tf.reproduce.published import EPS_BLOCKS, HE_PARAMS, SHARESNET_TABLE1
from epsresnet_tf.reproduce.steps import Ablate, Compress, Describe, Step, Train


@dataclasses.dataclass(frozen=True)
class Piece:
    key: str  # make reproduce-<key>, runs/repro/<folder>/, docs/img/repro-<key>.png
    letter: str  # the list: (a) … (h)
    title: str
    claim: str
    paper: str
    steps: tuple[Step, ...]
    measured: str  # what is measured, in words
    rule: str  # the verdict rule, in words (measure.py implements it)
    takes: str  # what a full test would take
    measure: Callable
    notes: str = ""  # what the reader needs to read the numbers (no measured numbers)
    first_look: str = ""  # what issue 16 saw before this piece existed (quoted, not measured)


# --- the runs ----------------------------------------------------------------------------

DIGITS_EPS = {
    eps: Train("digits", "repro-digits-eps", epsilon=None if eps == 2.5 else eps)
    for eps in (2.5, 4.0, 5.0, 6.0, 8.0)
}
DIGITS_WARMUP = Train("digits", "repro-digits-eps-warmup", epsilon=5.0)
DIGITS_WD = Train("digits", "repro-digits-eps-wd")
CIFAR_EPS = Train("cifar", "repro-cifar-eps", "cifar10")
CIFAR_WD = Train("cifar", "repro-cifar-eps-wd", "cifar10")
MNIST = {
    net: Train("mnist", f"gates-mnist-{net}", "mnist")
    for net in ("plain-50", "plain-50-gated", "res-50", "res-50-gated")
}
REMOVAL = {
    net: Train("removal", f"gates-mnist-{net}", "mnist", depth=100)
    for net in ("res-50", "res-50-gated")
}
UNIT_ORDER = {o: Train("unit-order", f"repro-cifar-{o}", "cifar10") for o in ("preact", "original")}

DESCRIBE = tuple(  # dict: once each (ResNet-164 is in two tables)
    dict.fromkeys(
        [
            Describe("params", a, c, share)
            for a, c, *_ in SHARESNET_TABLE1
            for share in (False, True)
        ]
        + [Describe("params", a, c) for a, c, _ in HE_PARAMS]
        + [Describe("params", a) for a, _ in EPS_BLOCKS]
    )
)
SWEEP = tuple(DIGITS_EPS.values())
SWEEP_COMPRESS = tuple(Compress(t) for t in SWEEP)
DYNAMIC = (DIGITS_EPS[2.5], DIGITS_EPS[5.0], DIGITS_WARMUP, DIGITS_WD, CIFAR_EPS, CIFAR_WD)
REMOVAL_ABLATE = (
    Ablate(REMOVAL["res-50"], "random", 0, 25),
    Ablate(REMOVAL["res-50-gated"], "random", 0, 25),
    Ablate(REMOVAL["res-50-gated"], "greedy-k", 0, 25),
    Ablate(REMOVAL["res-50"], "random", 1, 25),
    Ablate(REMOVAL["res-50-gated"], "random", 1, 25),
)

DYNAMIC_NOTES = """**What governs when a block goes.** The gate closes when every |F| of the block over the
batch is below ε (docs/semantics.md §1): ε is compared with the tail of the block's
responses, the max over the batch (images × H × W × C values), several standard deviations above a
typical |F|. That scale is set by the block's last convolution kernel times the BatchNorm
scale before it. The loss gradient holds up the kernels of a useful block; weight decay
(c·w each step, amplified by momentum to lr·c/(1 − 0.9)) pulls every kernel down. Hence:

1. **Born closed**: where ε exceeds a block's responses at initialisation, the block is
   closed from the first steps, its kernels then see only weight decay, and it never
   reopens (it is counted in the first ε epoch: the column "closed in 1st ε epoch").
2. **Gradual**: a block that starts open goes only when the decay has won over its loss
   gradient, which takes many steps at a large lr: the paper's 1,000 epochs of 390 steps,
   with the lr reset to 0.1 after each discard. Within a few thousand steps nothing goes at
   ε = 2.5 unless the responses are near ε (compare the median max|F| column with ε) or the
   decay is made stronger (the `-wd` settings compress it ten-fold).
3. **The reset** fires only when a block goes at least about 90 steps before an epoch ends
   and the epoch is not the first (docs/semantics.md §7): every setting here has 100 or
   more steps per epoch.
4. **The warm-up** (the authors' last CIFAR script: ε = 0 first) avoids born-closed blocks;
   at the switch-on every block whose responses have stayed below ε closes at once.
5. **Flickering**: a block whose max|F| sits at ε is closed on some batches and open on
   others (one T per batch); on the open ones it still gets a gradient, so it neither
   collapses nor counts as gone: its average stays between 0.1 and 0.9 ("flickering at
   end"), and the certificate keeps it (it is not closed on every image)."""

# --- the pieces --------------------------------------------------------------------------

_EPS_TAKES = (
    "CIFAR-10 (50,000 images, 390 steps per epoch) and the paper's 1,000 epochs with the "
    "adaptive reset: `make reproduce-gpu` (table eps-cifar10)"
)

PIECES = (
    Piece(
        "params",
        "g",
        "Parameter tables (exact)",
        "ShaResNet's shared 3×3 kernels cut parameters by 20–45% (Table 1); He et al.'s "
        "CIFAR ResNets have 1.7M–19.4M parameters; ε-ResNet's CIFAR nets of depth "
        "110/200/500/752 have 54/99/249/375 blocks.",
        "ShaResNet Table 1; He et al. 2016 Tables 3–4; ε-ResNet §4",
        DESCRIBE,
        "trainable parameters (with and without BatchNorm's γ and β), convolutions and "
        "blocks of each architecture (`epsresnet describe --json`)",
        "reproduced when every parameter count equals the paper's at its printed precision "
        "(or within 1%), counted with or without BatchNorm's γ and β (papers differ on "
        "it), and every block count is equal; the layer counts are shown, not judged (the "
        "papers count shortcut convolutions differently)",
        "nothing more: the counts are exact",
        measure.params,
        notes="The papers count parameters two ways, so both counts are shown: He et al. "
        "2016's ResNet-1001 \"10.2M\" leaves out BatchNorm's γ and β (1.3% more with them), "
        'while the ResNet-1202 "19.4M" it quotes from He et al. 2015 counts them (19.3M '
        "without). Each published count matches one of the two at its printed precision.",
    ),
    Piece(
        "dynamic",
        "a",
        "The discard dynamic",
        "The share of discarded blocks grows during training and saturates; each discarded "
        "block resets the learning rate (adaptive schedule).",
        "ε-ResNet Fig. 9 and §4 (adaptive learning rate)",
        DYNAMIC,
        "per epoch: the discarded count (the moving average the reset reads), the lr, each "
        "block's max|F| against ε",
        "reproduced when some finished run has a block go after the first epoch with ε > 0 "
        "(not at initialisation or at the warm-up's switch-on; gone: its discarded average "
        "stays ≥ 0.9 to the end), at least one lr reset (the run's rule replayed on its "
        "history), and no block going in the last quarter of its epochs (saturation)",
        _EPS_TAKES,
        measure.dynamic,
        notes=DYNAMIC_NOTES,
        first_look="cifar-basic-32, 40 epochs: nothing discarded at ε = 2.5 and 4 (every max|F| 6–28); at ε = 8, 2.9 blocks discarded in epoch 1 at 78% training error (born closed), 6 by epoch 19 (the issue suspected the reset never fired)",
    ),
    Piece(
        "eps-sweep",
        "b",
        "ε against compression",
        "A larger ε discards more blocks (monotone), trading error for size.",
        "ε-ResNet Fig. 8 and §4 (ε parameter)",
        SWEEP + SWEEP_COMPRESS,
        "blocks removed by the certificate at each ε, test error",
        "reproduced when the discarded count does not fall as ε grows and takes at least "
        "two different non-zero values over at least 3 finished runs",
        _EPS_TAKES,
        measure.eps_sweep,
        first_look="0 / 0 / 0 / 6 blocks at ε = 0 / 2.5 / 4 / 8: monotone, one non-zero point",
    ),
    Piece(
        "groups",
        "c",
        "Discards per group",
        "ε-ResNet discards more blocks in the groups near the output.",
        "ε-ResNet Fig. 10 and §4 (side supervision, layer selection)",
        SWEEP + SWEEP_COMPRESS,
        "discarded/total blocks per group, per run and pooled over the sweep's runs that "
        "discarded some but not all of their blocks",
        "reproduced when the pooled discarded share does not fall from the first group to "
        "the last and the last group's share is larger than the first's",
        _EPS_TAKES,
        measure.groups,
        first_look="reversed: 3 / 2 / 1 discarded from input to output",
    ),
    Piece(
        "reduced",
        "d",
        "Full against reduced",
        "The reduced (standard) ResNet keeps the full net's error with fewer parameters.",
        "ε-ResNet Figs. 6–7 and Fig. 1 (24.8% full, 23.8% reduced)",
        SWEEP + SWEEP_COMPRESS,
        "test error of the trained net, of the certified reduced net and of the authors' "
        "EMA-rule reduced net; parameters and their float32 memory",
        "reproduced when every compressed run that removed blocks keeps its test error "
        "within 0.5 points with fewer parameters",
        _EPS_TAKES,
        measure.reduced,
        first_look="yes (certificate exact, −23% parameters at ε = 8)",
    ),
    Piece(
        "mnist-table",
        "e",
        "Gated plain nets train where plain nets fail",
        "A plain fully connected net of d = 50 layers fails on MNIST (60.37% error) while "
        "its gated version trains (1.36%); mean k 0.46.",
        "Savarese et al. Tables 1–2",
        tuple(MNIST.values()),
        "test error and mean k after the paper's 100 epochs (Nadam, lr 0.002, batch 128)",
        "reproduced when the plain net's test error is at least 50% and the gated plain "
        "net's at most 10%",
        "the full MNIST (60,000 images: 469 steps per epoch, 16× the subset's 28)",
        measure.mnist_table,
        notes="How to read it: a gated layer computes g(k)·f(x) + (1 − g(k))·x with k "
        "starting at 1, so the gated plain net starts as the plain net; it trains where the "
        "plain one fails only once k has fallen far enough for the layers to carry their "
        "input through (the paper ends at mean k 0.46). The paper's 100 epochs are 46,900 "
        "steps of the full MNIST; on the subset they are 16 times fewer (the steps column), "
        "and where mean k has stayed near 1 the gated net is still the plain net and fails "
        "like it: the claim is not reached, which is not evidence against it.",
        first_look="both fail at 40 epochs (87% / 86%); k stayed 0.83–1.04",
    ),
    Piece(
        "removal",
        "f",
        "Removal curves, gated against plain",
        "Gated ResNets degrade more slowly than ResNets when blocks are removed at random; "
        "removing the smallest k first is slightly better than random.",
        "Savarese et al. Fig. 5 (right), MNIST d = 100",
        tuple(REMOVAL.values()) + REMOVAL_ABLATE,
        "test error after removing 0…25 of the 50 blocks (random order: mean of 2 seeds)",
        "reproduced when the gated ResNet's mean test error over 1…25 random removals is "
        "below the ResNet's",
        "the full MNIST; all 50 removals",
        measure.removal,
        notes="How to read it: the claim is about trained nets, whose gates have learned which "
        "blocks matter (small k: a block close to an identity, cheap to remove). Compare the "
        "error with nothing removed (first column) with the paper's 1–2%: on the subset's "
        "2,800 steps neither d = 100 net is trained to that point, so removing any block "
        "costs about the same in both; and greedy-k (smallest k first) can only beat random "
        "order where k measures a block's contribution, which an undertrained net's k does "
        "not.",
        first_look="about the same; greedy-by-k worse than random",
    ),
    Piece(
        "unit-order",
        "h",
        "Unit order (optional)",
        "Full pre-activation units give a lower error than the original units.",
        "He et al. 2016 Table 3 (ResNet-110: 6.37% against 6.61%)",
        tuple(UNIT_ORDER.values()),
        "test error of ResNet-20 with each unit order after 15 epochs on the subset",
        "reproduced when pre-activation is better by more than 2 standard errors of the "
        "1,017-image test error, not reproduced when worse by as much, else not testable "
        "here (within the noise)",
        "the full CIFAR-10 and ResNet-110/164 (differences of 0.2–0.5 points need 10,000 "
        "test images and several seeds)",
        measure.unit_order,
    ),
)

#: `make reproduce`: every piece's steps, cheapest and most telling first.
ORDER: tuple[Step, ...] = (
    DESCRIBE
    + (DIGITS_EPS[5.0], DIGITS_WD, DIGITS_WARMUP)
    + (DIGITS_EPS[2.5], DIGITS_EPS[4.0], DIGITS_EPS[6.0], DIGITS_EPS[8.0])
    + SWEEP_COMPRESS
    + (MNIST["plain-50"], MNIST["plain-50-gated"])
    + (MNIST["res-50"], MNIST["res-50-gated"])
    + tuple(REMOVAL.values())
    + REMOVAL_ABLATE
    + (CIFAR_EPS, CIFAR_WD)
    + tuple(UNIT_ORDER.values())
)


def get(key: str) -> Piece:

    for piece in PIECES:
        if piece.key == key:
            return piece
    raise UserError(f"unknown piece {key!r}: choose {', '.join(p.key for p in PIECES)}")


def steps_of(keys: list[str]):
    """`make reproduce`'s order, restricted to the named pieces' steps (all when none)."""
    if not keys:
        return list(ORDER)
    wanted = [s for k in keys for s in get(k).steps]
    ordered = [s for s in ORDER if s in wanted]
    return ordered + [s for s in wanted if s not in ordered]
