"""`epsresnet sweep-eps RECIPE --eps 1.5,2,2.5,3`: the ε-ResNet paper's first open problem —
which ε? Trains one short run per ε (the recipe with overrides), compresses each with a
certificate, and names the largest compression whose error stays within a budget.

    pick(rows, budget=None, max_error=None) -> the chosen row or None
    sweep_eps(recipe, eps_values, out, data_dir, ...) -> {"rows": [...], "choice": row}

Rows: epsilon, run, error (last validation error), removed/blocks, layer and parameter
compression. Re-running resumes finished runs (the training loop's resume) and reuses their
certificates, so a sweep can be extended by adding values.
"""

from pathlib import Path

from tabulate import tabulate

from epsresnet_tf import jsonsafe, recipes
from epsresnet_tf.commands import add_command, data_dir, option
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import get_gate
from epsresnet_tf.runfolder import RunFolder
from epsresnet_tf.train.loop import run_training


def parse_eps(text):
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise UserError(f"--eps takes comma-separated numbers, e.g. 1.5,2,2.5,3 ({err})") from err
    if not values or any(v < 0 for v in values):
        raise UserError("--eps needs at least one value, all >= 0")
    return values


def pick(rows, budget=None, max_error=None):
    """The row with the largest compression (layers, then parameters) whose error is at most
    `max_error`, or at most the sweep's best error + `budget` (both fractions, e.g. 0.01)."""
    errors = [r["error"] for r in rows if r.get("error") is not None]
    if not errors:
        return None
    limit = max_error if max_error is not None else min(errors) + (budget or 0.0)
    ok = [r for r in rows if r.get("error") is not None and r["error"] <= limit + 1e-12]
    if not ok:
        return None
    return max(
        ok,
        key=lambda r: (
            r.get("layer_compression") or 1.0,
            r.get("param_compression") or 1.0,
            -r["error"],
        ),
    )


def _row(eps, run_dir, history, cert):
    err = next((h["val_error"] for h in reversed(history) if h.get("val_error") is not None), None)
    row = {"epsilon": eps, "run": str(run_dir), "error": err}
    if cert:
        b, a = cert["before"], cert["after"]
        row.update(
            removed=cert["removed_count"],
            blocks=cert["blocks_before"],
            layer_compression=b["layers"] / a["layers"],
            param_compression=b["trainable_params"] / a["trainable_params"],
            equivalent=cert["equivalence"]["passed"],
        )
    elif history:
        last = history[-1]
        row.update(
            removed=round(last.get("discarded_count", 0.0), 2), blocks=len(last.get("blocks", {}))
        )
    return row


def _train_one(recipe, eps, out, data_dir, overrides, compress, max_batches, verbose):
    """Train (or resume) the sweep's run for one ε and certify it: (row, run_dir), run_dir
    None when training did not finish."""
    from epsresnet_tf import compress as C

    _, cfg = recipes.resolve(recipe, epsilon=eps, **overrides)
    kind = get_gate(cfg["gate"])
    if kind is None or "epsilon" not in kind.hyper_parameters:
        raise UserError(f"recipe {recipe} trains gate {cfg['gate']!r}: sweep-eps needs an ε-net")
    run_dir = out / f"eps{eps:g}"
    result = run_training(cfg, run_dir, data_dir, verbose=verbose)
    if result["status"] != "done":
        return {
            "epsilon": eps,
            "run": str(run_dir),
            "error": None,
            "status": result["status"],
        }, None
    cert = None
    folder = RunFolder(run_dir)
    if compress:
        cert = folder.read_certificate()
    if compress and cert is None:
        cert = C.compress_run(run_dir, data_dir, max_batches=max_batches)
    return _row(eps, run_dir, folder.read_history(), cert), run_dir


def sweep_eps(
    recipe,
    eps_values,
    out,
    data_dir,
    *,
    epochs=None,
    steps_per_epoch=None,
    val_steps=None,
    batch_size=None,
    seed=None,
    budget=0.01,
    max_error=None,
    compress=True,
    max_batches=None,
    verbose=0,
    report=True,
):
    """Train one run of `recipe` per ε, certify each, pick the best within the budget; writes
    `out/sweep.json` (and `out/report/` for two or more finished runs) and returns its doc."""
    out = Path(out)
    overrides = dict(
        epochs=epochs,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        val_steps=val_steps,
        seed=seed,
    )
    rows, run_dirs = [], []
    for eps in eps_values:
        row, run_dir = _train_one(
            recipe, eps, out, data_dir, overrides, compress, max_batches, verbose
        )
        rows.append(row)
        if run_dir is not None:
            run_dirs.append(run_dir)
    choice = pick(rows, budget, max_error)
    doc = {
        "recipe": recipe,
        "budget": budget,
        "max_error": max_error,
        "rows": rows,
        "choice": choice,
    }
    (out / "sweep.json").write_text(jsonsafe.dumps(doc, indent=2) + "\n")
    if report and len(run_dirs) > 1:
        from epsresnet_tf.report import make_report

        doc["report"] = make_report(run_dirs, out / "report", force=True)["files"]
    return doc


def _cli(args):

    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.recipe).stem}"
    doc = sweep_eps(
        args.recipe,
        parse_eps(args.eps),
        out,
        args.data_dir,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        val_steps=args.val_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        budget=args.budget,
        max_error=args.max_error,
        compress=not args.no_compress,
        max_batches=args.max_batches,
        verbose=0 if args.quiet else 2,
    )

    def f(v, fmt):
        return "n/a" if v is None else fmt.format(v)

    table = [
        [
            r["epsilon"],
            f(r.get("error"), "{:.2%}"),
            f"{r.get('removed', 'n/a')}/{r.get('blocks', 'n/a')}",
            f(r.get("layer_compression"), "{:.2f}×"),
            f(r.get("param_compression"), "{:.2f}×"),
        ]
        for r in doc["rows"]
    ]
    print(tabulate(table, headers=["ε", "error", "removed/blocks", "layers", "params"]))
    c = doc["choice"]
    if c:
        print(
            f"largest compression within the budget: ε = {c['epsilon']:g} (error "
            f"{c['error']:.2%}, layers {f(c.get('layer_compression'), '{:.2f}×')})"
        )
    else:
        print("no run finished with an error within the budget")
    print(f"wrote {out / 'sweep.json'}")
    return 0


def register(subparsers):
    """Add the `sweep-eps` subcommand."""
    add_command(
        subparsers,
        "sweep-eps",
        help="train short runs over a list of ε and report compression against error",
        description="Train RECIPE once per ε (short schedule overrides), compress each run, and "
        "name the largest compression within the error budget. Writes "
        "OUT/eps<ε>/ run folders, OUT/sweep.json and OUT/report/.",
        func=_cli,
        options=[
            option("recipe", help="recipe name (epsresnet train --list) or JSON path"),
            option("--eps", required=True, help="comma-separated ε values, e.g. 1.5,2,2.5,3"),
            data_dir("dataset root"),
            option("--out", default=None, help="sweep folder (default: runs/sweep-RECIPE)"),
            option("--epochs", type=int, default=None, help="epochs per run (short schedules)"),
            option("--steps-per-epoch", type=int, default=None, help="steps per epoch"),
            option("--val-steps", type=int, default=None, help="validation batches per epoch"),
            option("--batch-size", type=int, default=None, help="batch size per replica"),
            option("--seed", type=int, default=None, help="seed of every run"),
            option(
                "--budget",
                type=float,
                default=0.01,
                help="allowed error above the sweep's best, as a fraction (0.01 = 1 point)",
            ),
            option("--max-error", type=float, default=None, help="absolute error ceiling instead"),
            option(
                "--no-compress",
                action="store_true",
                help="skip certification; compression from the EMA rule of the last epoch",
            ),
            option("--max-batches", type=int, default=None, help="certify on N batches per split"),
            option("--quiet", action="store_true", help="no per-epoch lines"),
        ],
    )
