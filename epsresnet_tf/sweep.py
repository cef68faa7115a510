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

from epsresnet_tf import compress as C
from epsresnet_tf import jsonsafe, recipes
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import get_gate
from epsresnet_tf.report import make_report
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
    _, cfg = recipes.resolve(recipe, epsilon=eps, **overrides)
    kind = get_gate(cfg["gate"])
    if "epsilon" not in kind.hyper_parameters:
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
        cert = C.compress_run(run_dir, data_dir, select=C.RunSelection(max_batches=max_batches))
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
        doc["report"] = make_report(run_dirs, out / "report", force=True)["files"]
    return doc
