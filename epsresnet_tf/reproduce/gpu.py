"""`make reproduce-gpu`: the papers' full-scale runs, one command per paper table, for a GPU
host with the datasets. Each table trains its recipes (resumable, as `make reproduce`),
compresses the ε-nets, and writes OUT/repro-gpu/<table>.md: a row per recipe with the
published number beside ours.

    python -m epsresnet_tf.reproduce gpu TABLE --data-dir DATA --gpus N [--root OUT/repro-gpu]
    python -m epsresnet_tf.reproduce gpu --list
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tabulate import tabulate

from epsresnet_tf import recipes
from epsresnet_tf.errors import UserError
from epsresnet_tf.reproduce import published as P
from epsresnet_tf.reproduce import readers as R
from epsresnet_tf.reproduce.runner import run_steps
from epsresnet_tf.reproduce.steps import Compress, Train
from epsresnet_tf.reproduce.verdicts import pct
from epsresnet_tf.runfolder import atomic_write_text, last_val_error

GPU_ROOT = "runs/repro-gpu"


@dataclasses.dataclass(frozen=True)
class GpuTable:
    key: str
    paper: str
    recipes: tuple[str, ...]
    published: dict  # recipe -> the paper's number(s), as text


def _eps_family(dataset: str, depths, paper: str) -> GpuTable:
    names = [f"{dataset}-{kind}-{d}" for d in depths for kind in ("eps", "base", "base-side")]
    names = [n for n in names if not (dataset == "svhn" and "side" in n)]  # no SVHN side runs
    published = dict.fromkeys(names, "figure only")
    if dataset == "cifar100":
        c = P.EPS_RESNET["cifar100_752"]
        published["cifar100-eps-752"] = (
            f"Fig. 1: {c['error_full']}% full, {c['error_reduced']}% reduced, "
            f"{c['layer_compression']}× fewer layers"
        )
    if dataset == "cifar10":
        published["cifar10-base-110"] = f"He et al. Table 3: {P.HE_TABLE3[0][3]}% (pre-act)"
    return GpuTable(f"eps-{dataset}", paper, tuple(names), published)


def _imagenet() -> GpuTable:
    names = (
        "imagenet-eps-101-e2.0",
        "imagenet-eps-101-e2.1",
        "imagenet-eps-101-e2.1-as-run",
        "imagenet-eps-152-e1.8",
        "imagenet-eps-152-e1.8-as-run",
    )
    discarded = ", ".join(f"{v}%" for v in P.EPS_RESNET["imagenet_discarded_percent"])
    text = f"§4: {discarded} of layers discarded over their three runs (not said which)"
    return GpuTable("eps-imagenet", "ε-ResNet Fig. 6(d, h), §4", names, dict.fromkeys(names, text))


def _pairs(key: str, paper: str, rows, suffixes: tuple[str, str]) -> GpuTable:
    published = {}
    for _, label, stem, original, changed in rows:
        published[f"{stem}{suffixes[0]}"] = f"{label}: {original}%"
        published[f"{stem}{suffixes[1]}"] = f"{label}: {changed}%"
    return GpuTable(key, paper, tuple(published), published)


TABLES = (
    _eps_family("cifar10", (110, 200, 500, 752), "ε-ResNet Figs. 6(a, e), 7(a)"),
    _eps_family("cifar100", (110, 200, 500, 752), "ε-ResNet Figs. 1, 6(b, f), 7(b)"),
    _eps_family("svhn", (110, 200, 302), "ε-ResNet Figs. 6(c, g), 7(c)"),
    _imagenet(),
    _pairs("gates-cifar", "Savarese et al. Tables 3–5", P.GATES_CIFAR, ("-original", "-gated")),
    _pairs("sharesnet", "ShaResNet Table 2 (CIFAR rows)", P.SHARESNET_TABLE2, ("", "-shared")),
)


def get(key: str) -> GpuTable:
    for table in TABLES:
        if table.key == key:
            return table
    raise UserError(f"unknown GPU table {key!r}: choose {', '.join(t.key for t in TABLES)}")


def steps(table: GpuTable, gpus: int | None = None) -> list:
    """Train every recipe of the table (data under --data-dir), then compress the ε-nets."""
    trains = [
        Train(table.key, name, recipes.load(name)["dataset"], gpus=gpus) for name in table.recipes
    ]
    eps = [t for t in trains if recipes.load(t.recipe).get("gate") == "eps"]
    return trains + [Compress(t) for t in eps]


def row(train: Train, root: Path, published: str) -> list[str]:
    """Our numbers for one recipe beside the published ones."""
    run_dir = train.run_dir(root)
    history, cert = R.history(run_dir), R.certificate(run_dir)
    top5 = next((r["val_top5_error"] for r in reversed(history) if r.get("val_top5_error")), None)
    removed = f"{cert['removed_count']}/{cert['blocks_before']}" if cert else "–"
    size = (
        f"{cert['before']['trainable_params']:,} → {cert['after']['trainable_params']:,}"
        if cert
        else "–"
    )
    epochs = f"{len(history)}/{(R.config(run_dir) or {}).get('epochs', '–')}"
    return [train.recipe, epochs, pct(last_val_error(history)), pct(top5), removed, size, published]


HEADERS = ["recipe", "epochs", "top-1 error", "top-5", "discarded", "params", "published"]


def table_rows(table: GpuTable, root: Path) -> list[list[str]]:
    """A row per recipe: ours from its run folder under `root` ("–" until run), published."""
    trains = [t for t in steps(table) if isinstance(t, Train)]
    return [row(t, root, table.published[t.recipe]) for t in trains]


def table_markdown(table: GpuTable, root: Path) -> str:

    body = tabulate(
        table_rows(table, root), headers=HEADERS, tablefmt="github", disable_numparse=True
    )
    return f"## {table.key} ({table.paper})\n\n{body}\n"


SECTION_TEXT = (
    "Not run on this machine (CPU only, no dataset but the subsets). On a GPU host with the "
    "datasets under `DATA` (`make data-list` says where each goes), `make reproduce-gpu "
    "DATA=… GPUS=N` runs one command per paper table: it trains the table's recipes "
    "(resumable, as `make reproduce`), compresses the ε-nets and writes "
    "`runs/repro-gpu/<table>.md`; `make reproduce-doc` then fills the rows below from "
    '`runs/repro-gpu/`. "published" is the papers\' number where their text prints one; '
    "most of ε-ResNet's are in figures only."
)


def section(root: Path, table_fn) -> list[str]:
    """The document's full-scale part: per table its command and rows (ours from the run
    folders under `root` where they exist, "–" until then) beside the published numbers.
    `table_fn(headers, rows)` formats a table."""
    lines = ["## Full scale: `make reproduce-gpu`", "", SECTION_TEXT, ""]
    for table in TABLES:
        command = f"python -m epsresnet_tf.reproduce gpu {table.key} --data-dir DATA --gpus N"
        lines += [f"### {table.key}: {table.paper}", "", f"`{command}`", ""]
        lines += [table_fn(HEADERS, table_rows(table, root)), ""]
    return lines


def run_tables(args) -> int:
    """`reproduce gpu`: run the named tables' steps, then write each table."""
    if args.list:
        for table in TABLES:
            print(f"{table.key}: {table.paper}: {' '.join(table.recipes)}")
        return 0
    if not args.tables:
        raise UserError("name a table (python -m epsresnet_tf.reproduce gpu --list)")

    root, data = Path(args.root), {}
    failed = 0
    for key in args.tables:
        table = get(key)
        data = {t.dataset: args.data_dir for t in steps(table) if isinstance(t, Train)}
        failed += len(run_steps(steps(table, args.gpus), root, data)["failed"])
        out = root / f"{table.key}.md"
        atomic_write_text(out, table_markdown(table, root))
        print(f"wrote {out}")
    return 1 if failed else 0
