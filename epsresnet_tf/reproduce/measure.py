"""Each piece's measurement: its tables and its verdict, computed from run folders only.

Every function takes the piece (its declared steps) and the root of the run folders, and
returns a `Result`. The verdict rules are stated in the piece's `rule` text (pieces.py)
and implemented here; tests/test_reproduce.py checks them on a fixture of run folders.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from epsresnet_tf.config import DEFAULTS
from epsresnet_tf.reproduce import published as P
from epsresnet_tf.reproduce import readers as R
from epsresnet_tf.reproduce.steps import Ablate, Compress, Describe, Train
from epsresnet_tf.reproduce.verdicts import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PENDING,
    REPRODUCED,
    Result,
    Table,
    num,
    pct,
)
from epsresnet_tf.runfolder import last_val_error
from epsresnet_tf.train.loop import lr_schedule

# --- the discard dynamic (a) -------------------------------------------------------------


def replay_resets(cfg: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[int]:
    """The epochs after which the adaptive reset fired: the run's own rule
    (train.loop.lr_schedule, docs/semantics.md §7) replayed on its history, as the
    training callback called it. (A reset during the lr-0.1 phase leaves no jump in lr.)"""
    if not cfg or not rows or not cfg.get("adaptive_schedule"):
        return []

    full = {**DEFAULTS, **cfg}
    schedule = lr_schedule(full)
    counts = [r[full["reset_statistic"]] for r in rows]
    for epoch in range(1, len(rows)):
        schedule.lr_for_epoch(epoch, counts[:epoch])
    return list(getattr(schedule, "resets", []))


#: A block counts as gone once its discarded average stays at or above this to the end
#: of the run; one that ends between FLICKER and GONE opens and closes batch by batch.
GONE, FLICKER = 0.9, 0.1


def gone_at(rows: list[dict[str, Any]]) -> dict[str, int]:
    """{block: the epoch from which its discarded average stays ≥ GONE to the last row}."""
    out: dict[str, int] = {}
    for block in rows[-1]["blocks"] if rows else {}:
        streak = None
        for row in rows:
            closed = row["blocks"].get(block, {}).get("discarded", 0.0) >= GONE
            streak = (streak or row["epoch"]) if closed else None
        if streak is not None:
            out[block] = streak
    return out


def dynamic_facts(
    rows: list[dict[str, Any]], epochs: int, cfg: dict[str, Any] | None = None
) -> dict[str, Any]:
    """When blocks went in one ε run: those closed in the first epoch with ε > 0 (at
    initialisation or at the warm-up's switch-on), those that went later (epoch: count),
    the ones flickering at the end, the lr resets (the rule replayed from the config),
    saturation (none went in the last quarter of a finished run) and the responses."""
    on = next((r["epoch"] for r in rows if (r.get("epsilon") or 0) > 0), None)
    went = gone_at(rows) if on is not None else {}
    later = sorted(e for e in went.values() if e > on) if went else []
    first = next((r["blocks"] for r in rows if r["epoch"] == on), {})
    last = rows[-1]["blocks"] if rows else {}
    kept = [b["response_max"] for b in last.values() if b["discarded"] < 0.5]
    finished = bool(rows) and rows[-1]["epoch"] >= epochs
    quarter = epochs - max(epochs // 4, 1)
    return {
        "on": on,
        "epsilon": next((r["epsilon"] for r in rows if r["epoch"] == on), None),
        "closed_first": sum(e == on for e in went.values()) if on is not None else None,
        "rises": [(e, later.count(e)) for e in sorted(set(later))],
        "flickering": sum(FLICKER < b["discarded"] < GONE for b in last.values()),
        "resets": replay_resets(cfg, rows),
        "final": rows[-1]["discarded_count"] if rows else None,
        "finished": finished,
        "saturated": finished and not any(e > quarter for e in later),
        "median_response_first": statistics.median(b["response_max"] for b in first.values())
        if first
        else None,
        "kept_response": (min(kept), max(kept)) if kept else None,
        "steps_per_epoch": rows[0]["step"] if rows else None,
        "error": last_val_error(rows),
    }


def _dynamic_row(name: str, cfg: dict | None, facts: dict, epochs: int, done: int) -> list[str]:
    if not done:
        return [name, "not started", *["–"] * (len(DYNAMIC_HEADERS) - 2)]
    rises = ", ".join(f"{e}: +{n}" for e, n in facts["rises"]) or "none"
    kept = facts["kept_response"]
    eps = facts["epsilon"] if facts["epsilon"] is not None else (cfg or {}).get("epsilon")
    return [
        name,
        f"{num(eps, '{:g}')} from epoch {facts['on'] or '–'}",
        num((cfg or {}).get("weight_decay"), "{:g}"),
        num(facts["steps_per_epoch"], "{:d}"),
        f"{done}/{epochs}",
        num(facts["median_response_first"], "{:.1f}"),
        num(facts["closed_first"], "{:d}"),
        rises,
        str(facts["flickering"]),
        ", ".join(map(str, facts["resets"])) or "none",
        num(facts["final"], "{:.1f}"),
        "–" if kept is None else f"{kept[0]:.1f}–{kept[1]:.1f}",
        pct(facts["error"]),
    ]


DYNAMIC_HEADERS = [
    "run",
    "ε",
    "weight decay",
    "steps/epoch",
    "epochs",
    "median max|F|, 1st ε epoch",
    "closed in 1st ε epoch",
    "went later (epoch: +blocks)",
    "flickering at end",
    "lr resets (after epoch)",
    "discarded at end",
    "max|F| of kept blocks at end",
    "test error",
]


def dynamic(piece, root: Path) -> Result:
    """(a) Blocks go gradually, the reset fires, the count saturates (ε-ResNet Fig. 9)."""
    rows, found, unfinished = [], [], 0
    for step in _trains(piece):
        history, cfg = R.history(step.run_dir(root)), R.config(step.run_dir(root))
        epochs = (cfg or {}).get("epochs") or 0
        facts = dynamic_facts(history, epochs, cfg)
        rows.append(_dynamic_row(step.name, cfg, facts, epochs, len(history)))
        unfinished += not facts["finished"]
        if facts["finished"] and facts["rises"] and facts["resets"] and facts["saturated"]:
            found.append(step.name)
    table = Table("Discards over training, per setting", DYNAMIC_HEADERS, rows)
    if found:
        why = (
            f"{', '.join(found)}: blocks went after the first ε epoch, the lr reset "
            "fired, and no block went in the last quarter of the epochs"
        )
        return Result([table], REPRODUCED, why)
    if unfinished:
        return Result([table], PENDING, f"{unfinished} of {len(rows)} runs unfinished")
    why = "no setting had a block go after the first ε epoch, a reset and saturation"
    return Result([table], NOT_REPRODUCED, why)


# --- ε sweep, groups, full against reduced (b–d) -----------------------------------------


def discards(step: Train, root: Path) -> dict[str, Any] | None:
    """A finished ε run's discarded blocks: the certificate's (exact) when compressed, else
    the blocks whose discarded average reads ≥ 0.5 at the last epoch. None if unfinished."""
    if not step.done(root):
        return None
    run_dir = step.run_dir(root)
    rows, cert = R.history(run_dir), R.certificate(run_dir)
    blocks = sorted(rows[-1]["blocks"])
    if cert:
        removed, source = set(cert["removed"]), "certificate"
    else:
        removed = {b for b, v in rows[-1]["blocks"].items() if v["discarded"] >= 0.5}
        source = "last epoch's averages"
    return {
        "epsilon": rows[-1]["epsilon"],
        "blocks": blocks,
        "removed": removed,
        "source": source,
        "error": last_val_error(rows),
        "certificate": cert,
    }


def _sweep_points(piece, root: Path) -> tuple[list[tuple[Train, dict]], int]:
    points, unfinished = [], 0
    for step in _trains(piece):
        d = discards(step, root)
        if d is None:
            unfinished += 1
        else:
            points.append((step, d))
    return sorted(points, key=lambda p: p[1]["epsilon"]), unfinished


def sweep_verdict(counts: list[int]) -> tuple[str, str]:
    """Fig. 8's claim on (ε-ordered) discarded counts: non-decreasing in ε, with at least
    two different non-zero counts (a trade-off curve, not one step)."""
    if len(counts) < 3:
        return PENDING, f"{len(counts)} finished runs; the rule needs 3"
    monotone = all(a <= b for a, b in zip(counts, counts[1:]))
    levels = sorted({c for c in counts if c > 0})
    if monotone and len(levels) >= 2:
        return REPRODUCED, f"discarded blocks {counts} rise with ε through {len(levels)} levels"
    if not monotone:
        return NOT_REPRODUCED, f"discarded blocks {counts} fall somewhere as ε grows"
    return NOT_REPRODUCED, f"discarded blocks {counts}: monotone but not a curve ({levels})"


def eps_sweep(piece, root: Path) -> Result:
    """(b) Larger ε discards more blocks (ε-ResNet Fig. 8)."""
    points, unfinished = _sweep_points(piece, root)
    rows = [
        [
            f"{d['epsilon']:g}",
            step.name,
            f"{len(d['removed'])}/{len(d['blocks'])}",
            pct(len(d["removed"]) / len(d["blocks"]), 1),
            pct(d["error"]),
            d["source"],
        ]
        for step, d in points
    ]
    headers = ["ε", "run", "discarded", "ratio", "test error", "discarded by"]
    verdict, why = _so_far(*sweep_verdict([len(d["removed"]) for _, d in points]), unfinished)
    return Result([Table("Discarded blocks against ε", headers, rows)], verdict, why)


def group_fractions(points: list[dict]) -> list[tuple[int, int]]:
    """(discarded, total) per group, pooled over runs."""
    pooled: dict[int, list[int]] = {}
    for d in points:
        for block in d["blocks"]:
            entry = pooled.setdefault(R.group_of(block), [0, 0])
            entry[0] += block in d["removed"]
            entry[1] += 1
    return [tuple(pooled[g]) for g in sorted(pooled)]


def groups_verdict(pooled: list[tuple[int, int]]) -> tuple[str, str]:
    """Fig. 10's claim: the discarded share does not fall from input to output groups and
    the last group's is larger than the first's."""
    shares = [d / t for d, t in pooled]
    text = " / ".join(f"{d}/{t}" for d, t in pooled)
    if all(a <= b for a, b in zip(shares, shares[1:])) and shares[-1] > shares[0]:
        return REPRODUCED, f"discarded per group, input to output: {text}"
    return NOT_REPRODUCED, f"discarded per group, input to output: {text}"


def groups(piece, root: Path) -> Result:
    """(c) Later groups lose more blocks (ε-ResNet Fig. 10)."""
    points, unfinished = _sweep_points(piece, root)
    # a run that kept every block or discarded every one says nothing about where they go
    with_discards = [(s, d) for s, d in points if 0 < len(d["removed"]) < len(d["blocks"])]
    rows = []
    for step, d in with_discards:
        per = group_fractions([d])
        rows.append([step.name, f"{d['epsilon']:g}", *[f"{a}/{b}" for a, b in per]])
    if not with_discards:
        verdict = PENDING if unfinished else NOT_TESTABLE
        why = "no finished run discarded a block" + (
            f"; {unfinished} unfinished" if unfinished else ""
        )
        return Result([], verdict, why)
    pooled = group_fractions([d for _, d in with_discards])
    rows.append(["all runs above", "", *[f"{a}/{b}" for a, b in pooled]])
    headers = ["run", "ε", *[f"group {g} discarded" for g in range(len(pooled))]]
    verdict, why = _so_far(*groups_verdict(pooled), unfinished)
    return Result([Table("Discarded blocks per group", headers, rows)], verdict, why)


def _so_far(verdict: str, why: str, unfinished: int) -> tuple[str, str]:
    """A rule over all of a piece's runs gives no verdict while some are unfinished."""
    if unfinished and verdict != PENDING:
        return PENDING, f"so far {why}; {unfinished} runs unfinished"
    return verdict, why


def reduced_row(step: Train, cert: dict) -> list[str]:
    eq, before, after = cert["equivalence"], cert["before"], cert["after"]
    ema = cert["rules"].get("ema", {})
    return [
        step.name,
        f"{cert['removed_count']}/{cert['blocks_before']}",
        pct(eq.get("error_full")),
        pct(eq.get("error_reduced")),
        f"{pct(ema.get('test_error'))} ({ema.get('removed_count', '–')} removed)",
        f"{before['trainable_params']:,} → {after['trainable_params']:,}",
        f"{before['param_bytes'] / 2**20:.3f} → {after['param_bytes'] / 2**20:.3f} MB",
        f"{eq['max_abs_logit_diff']:.1e}",
    ]


def reduced(piece, root: Path) -> Result:
    """(d) The reduced net has the full net's error with fewer parameters (Figs. 6–7)."""
    rows, ok, bad, unfinished = [], [], [], 0
    for step in _trains(piece):
        cert = R.certificate(step.run_dir(root))
        if cert is None:
            unfinished += 1
            continue
        rows.append(reduced_row(step, cert))
        if cert["removed_count"]:
            eq = cert["equivalence"]
            same = abs(eq["error_reduced"] - eq["error_full"]) <= 0.005
            smaller = cert["after"]["trainable_params"] < cert["before"]["trainable_params"]
            (ok if same and smaller else bad).append(step.name)
    headers = ["run", "removed", "error full", "error reduced (certified)"]
    headers += ["error reduced (authors' EMA rule)", "params", "param memory", "max |Δlogit|"]
    tables = [Table("Full against reduced, on the test split", headers, rows)]
    if bad:
        why = f"error or size not kept: {', '.join(bad)}"
        return Result(tables, *_so_far(NOT_REPRODUCED, why, unfinished))
    if ok:
        why = f"{len(ok)} compressed runs: same error (±0.5 points), fewer parameters"
        return Result(tables, *_so_far(REPRODUCED, why, unfinished))
    verdict = PENDING if unfinished else NOT_TESTABLE
    return Result(tables, verdict, "no compressed run removed a block yet")


# --- MNIST table and removal curves (e, f) -----------------------------------------------


def mean_k(rows: list[dict[str, Any]]) -> float | None:
    ks = [b["k"] for b in (rows[-1]["blocks"] if rows else {}).values() if "k" in b]
    return statistics.fmean(ks) if ks else None


def mnist_verdict(errors: dict[str, float | None]) -> tuple[str, str]:
    """Table 1's claim at d = 50: the plain net fails (test error ≥ 50%) where the gated
    plain net trains (test error ≤ 10%)."""
    plain, gated = errors.get("plain-50"), errors.get("plain-50-gated")
    if plain is None or gated is None:
        return PENDING, "the plain and gated plain runs have not both finished"
    text = f"plain {pct(plain)}, gated plain {pct(gated)}"
    if plain >= 0.5 and gated <= 0.10:
        return REPRODUCED, text
    return NOT_REPRODUCED, text


def mnist_table(piece, root: Path) -> Result:
    """(e) Savarese et al. Table 1 (d = 50) and Table 2's mean k."""
    rows, errors = [], {}
    for step in _trains(piece):
        net = step.recipe.removeprefix("gates-mnist-")
        history = R.history(step.run_dir(root))
        cfg = R.config(step.run_dir(root)) or {}
        errors[net] = last_val_error(history) if step.done(root) else None
        paper = P.GATES_MNIST_ERROR[50].get(net.replace("-50", ""))
        k = P.GATES_MNIST_MEAN_K[50].get(net.replace("-50", ""))
        rows.append(
            [
                net,
                pct(last_val_error(history)),
                num(paper, "{:.2f}%"),
                num(mean_k(history)),
                num(k),
                f"{len(history)}/{cfg.get('epochs', '–')}",
                num(history[-1]["step"] if history else None, "{:,}"),
            ]
        )
    headers = ["net (d = 50)", "test error", "paper", "mean k", "paper mean k"]
    headers += ["epochs", "steps"]
    verdict, why = mnist_verdict(errors)
    return Result([Table("MNIST, fully connected, d = 50", headers, rows)], verdict, why)


def removal_curves(piece, root: Path) -> dict[tuple[str, str], dict[int, float]]:
    """{(run, order): {blocks removed: test error, mean over the seeds}} of the finished
    ablations."""
    curves: dict[tuple[str, str], dict[int, list[float]]] = {}
    for step in piece.steps:
        if isinstance(step, Ablate) and step.done(root):
            doc = R.step_output(step.path(root))
            curve = curves.setdefault((step.run.name, step.order), {})
            for row in doc["rows"]:
                curve.setdefault(row["removed"], []).append(row["top1_error"])
    return {k: {r: statistics.fmean(v) for r, v in c.items()} for k, c in curves.items()}


def removal(piece, root: Path) -> Result:
    """(f) Gated ResNets degrade more slowly under random removal (gates Fig. 5)."""
    curves = removal_curves(piece, root)
    marks = (0, 5, 10, 15, 20, 25)
    rows = []
    for (run, order), curve in sorted(curves.items()):
        later = [e for r, e in curve.items() if r > 0]
        rows.append(
            [run, order, *[pct(curve.get(m), 1) for m in marks], pct(statistics.fmean(later))]
        )
    headers = ["run", "order", *[f"{m} removed" for m in marks], "mean over removals"]
    tables = [Table("Test error after removing blocks (mean over seeds)", headers, rows)]
    plain = _mean_removed(curves, gated=False)
    gated = _mean_removed(curves, gated=True)
    if plain is None or gated is None:
        return Result(tables, PENDING, "the random-order ablations have not both finished")
    text = f"mean error over removals: gated {pct(gated)}, plain {pct(plain)} (random order)"
    return Result(tables, REPRODUCED if gated < plain else NOT_REPRODUCED, text)


def _mean_removed(curves, gated: bool) -> float | None:
    for (run, order), curve in curves.items():
        if order == "random" and run.startswith("gates-") and ("-gated" in run) == gated:
            return statistics.fmean(e for r, e in curve.items() if r > 0)
    return None


# --- parameter tables (g) and unit order (h) ---------------------------------------------


def matches(count: int, millions: float) -> bool:
    """Equal at the precision the paper prints ("1.7M") or within 1% of it."""
    decimals = len(f"{millions}".split(".")[1]) if "." in f"{millions}" else 0
    return round(count / 1e6, decimals) == millions or abs(count - millions * 1e6) <= (
        0.01 * millions * 1e6
    )


def count_matches(described: dict, millions: float) -> bool:
    """The paper's count, with BatchNorm's γ and β or without them (He et al.'s ResNet-1001
    "10.2M" leaves them out; a run folder described before that count existed has only
    the first)."""
    counts = [described["trainable_params"], described.get("trainable_params_without_bn")]
    return any(n is not None and matches(n, millions) for n in counts)


def _without_bn(described: dict | None) -> str:
    n = (described or {}).get("trainable_params_without_bn")
    return "–" if n is None else f"{n:,}"


def _described(piece, root: Path) -> dict[str, dict]:
    return {
        s.ident: R.step_output(s.path(root))
        for s in piece.steps
        if isinstance(s, Describe) and s.done(root)
    }


def _sharesnet_rows(got: dict[str, dict]) -> tuple[list[list[str]], list[tuple[bool, str]]]:
    rows, checks = [], []
    for arch, classes, orig, shared, drop, conv_o, conv_s in P.SHARESNET_TABLE1:
        ident = f"{arch}-c{classes}"
        a, b = got.get(ident), got.get(ident + "-shared")
        if not (a and b):
            rows.append([arch, "–", f"{orig}M", "–", f"{shared}M", "–", f"{drop}%", "–", "–"])
            continue
        pa, pb = a["trainable_params"], b["trainable_params"]
        checks += [
            (count_matches(a, orig), f"{arch}: {pa:,} against {orig}M"),
            (count_matches(b, shared), f"{arch} shared: {pb:,} against {shared}M"),
        ]
        rows.append(
            [
                arch,
                f"{pa:,}",
                f"{orig}M",
                f"{pb:,}",
                f"{shared}M",
                f"{100 * (1 - pb / pa):.0f}%",
                f"{drop}%",
                f"{a['conv_layers']} → {b['conv_layers']}",
                f"{conv_o} → {conv_s}",
            ]
        )
    return rows, checks


def params(piece, root: Path) -> Result:
    """(g) ShaResNet Table 1, He et al.'s parameter counts, ε-ResNet's block counts."""
    got = _described(piece, root)
    share_rows, checks = _sharesnet_rows(got)
    share_headers = ["net", "params", "paper", "shared", "paper", "decrease", "paper"]
    share_headers += ["independent convs (shortcuts included)", "paper"]
    he_rows, eps_rows = [], []
    for arch, classes, millions in P.HE_PARAMS:
        d = got.get(f"{arch}-c{classes}")
        if d:
            n = d["trainable_params"]
            checks.append((count_matches(d, millions), f"{arch}: {n:,} against {millions}M"))
        count = f"{d['trainable_params']:,}" if d else "–"
        he_rows.append([arch, count, _without_bn(d), f"{millions}M"])
    for arch, blocks in P.EPS_BLOCKS:
        d = got.get(arch)
        if d:
            checks.append((d["blocks"] == blocks, f"{arch}: {d['blocks']} blocks against {blocks}"))
        eps_rows.append([arch, str(d["blocks"]) if d else "–", str(blocks)])
    tables = [
        Table("ShaResNet Table 1: parameters", share_headers, share_rows),
        Table(
            "He et al. 2016 Tables 3–4: parameters",
            ["net", "params", "without BN γ, β", "paper"],
            he_rows,
        ),
        Table("ε-ResNet §4: residual blocks", ["net", "blocks", "paper"], eps_rows),
    ]
    expected = sum(isinstance(s, Describe) for s in piece.steps)
    if len(got) < expected:
        return Result(tables, PENDING, f"{len(got)} of {expected} nets described")
    differ = [text for ok, text in checks if not ok]
    if not differ:
        return Result(tables, REPRODUCED, f"all {len(checks)} counts match the papers")
    why = f"{len(checks) - len(differ)} of {len(checks)} counts match; differs: {'; '.join(differ)}"
    return Result(tables, NOT_REPRODUCED, why)


def unit_order(piece, root: Path) -> Result:
    """(h) He et al. 2016: full pre-activation units beat the original ones."""
    rows, errors = [], {}
    for step in _trains(piece):
        history = R.history(step.run_dir(root))
        err = last_val_error(history)
        errors[step.recipe] = err if step.done(root) else None
        best = min(
            (r["val_error"] for r in history if r.get("val_error") is not None), default=None
        )
        rows.append([step.name, pct(err), pct(best), f"{len(history)}"])
    tables = [Table("Unit order", ["run", "test error (last)", "best", "epochs"], rows)]
    pre, orig = errors.get("repro-cifar-preact"), errors.get("repro-cifar-original")
    if pre is None or orig is None:
        return Result(tables, PENDING, "both runs must finish")
    se = R.standard_error((pre + orig) / 2, CIFAR_SUBSET_TEST)
    text = f"pre-activation {pct(pre)}, original {pct(orig)}; 2 standard errors = {pct(2 * se)}"
    if orig - pre > 2 * se:
        return Result(tables, REPRODUCED, text)
    if pre - orig > 2 * se:
        return Result(tables, NOT_REPRODUCED, text)
    return Result(tables, NOT_TESTABLE, text + ": within the noise of 1,017 test images")


#: Test images of the CIFAR-10 subset (../shared/data/README.md).
CIFAR_SUBSET_TEST = 1017


def _trains(piece) -> list[Train]:
    """The piece's training runs (those its compress/ablate steps name included), once."""
    out = []
    for step in piece.steps:
        run = step.run if isinstance(step, (Compress, Ablate)) else step
        if isinstance(run, Train) and run not in out:
            out.append(run)
    return out
