"""The report's markdown tables: full against reduced (paper Figs. 6–7) and kept blocks per
group, from the summary rows (data.summary_rows)."""

from tabulate import tabulate

from epsresnet_tf.report.data import summary_rows

# --- tables ----------------------------------------------------------------------------


def _mb(n):
    return f"{n / 2**20:.2f} MB"


def _pct(v):
    """A fraction as a percentage with two decimals, or "n/a"."""
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _get(row, key, fmt=str):
    """row[key] formatted with `fmt`, or "n/a" when it is missing or None."""
    v = row.get(key)
    return "n/a" if v is None else fmt(v)


def _thousands(v):
    """An integer with thousands separators."""
    return f"{v:,}"


def _alone(row):
    """The exported net's error fed one image at a time, beside the gated net's where the
    export decided gates that decide per batch in the gated net."""
    alone = _pct(row.get("error_deployed_alone"))
    if row.get("error_gated_alone") is None:
        return alone
    return f"{alone} (gated {_pct(row['error_gated_alone'])})"


_MAIN_HEADERS = [
    "run",
    "arch",
    "ε",
    "error full",
    "error reduced",
    "error exported, one image at a time",
    "blocks",
    "layers",
    "params",
    "param memory (float32)",
    "layer compression",
]


def _main_table(rows):
    """The cells of the full-against-reduced table, one list per summary row."""
    return [
        [
            r["run"],
            r["arch"],
            _get(r, "epsilon", lambda v: f"{v:g}"),
            _pct(r["error_full"]),
            _pct(r["error_reduced"]),
            _alone(r),
            f"{_get(r, 'blocks_full')} → {_get(r, 'blocks_reduced')}",
            f"{_get(r, 'layers_full')} → {_get(r, 'layers_reduced')}",
            f"{_get(r, 'params_full', _thousands)} → {_get(r, 'params_reduced', _thousands)}",
            f"{_get(r, 'memory_full', _mb)} → {_get(r, 'memory_reduced', _mb)}",
            _get(r, "layer_compression", lambda v: f"{v:.2f}×"),
        ]
        for r in rows
    ]


def _per_group_section(runs):
    """The markdown lines of the kept-blocks-per-group table ([] when no run has a
    certificate)."""
    per_group = []
    for r in runs:
        c = r.certificate
        if c:
            per_group.append(
                [r.name]
                + [
                    f"{a}/{b}"
                    for a, b in zip(c["blocks_per_group_after"], c["blocks_per_group_before"])
                ]
            )
    if not per_group:
        return []
    width = max(len(p) for p in per_group) - 1
    return [
        "## Kept blocks per group (kept/total)",
        "",
        tabulate(
            per_group, headers=["run"] + [f"group {g}" for g in range(width)], tablefmt="github"
        ),
        "",
    ]


def tables(runs):
    """The report's markdown tables and the summary rows they show: (text, rows)."""
    rows = summary_rows(runs)
    text = [
        "## Full against reduced (paper Figs. 6–7)",
        "",
        tabulate(_main_table(rows), headers=_MAIN_HEADERS, tablefmt="github"),
        "",
        "Error: top-1 on the test images of `compress`'s equivalence check where present, "
        "else the last validation error in history.jsonl (the reduced net's is then the same "
        "when the check passed, else n/a). One image at a time: the exported net (reduced.keras) "
        "fed single images, as a client does; where the gated net decides a kept gate per "
        "batch, the export decided it once (certificate.json's deployment) and the gated "
        "net's error alone is beside it.",
        "",
    ]
    text += _per_group_section(runs)
    return "\n".join(text), rows
