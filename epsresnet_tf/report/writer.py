"""The report folder: tables.md, figures.md, the figures and report.json written through
outputs.py's staged swap; which files a new report replaces (the manifest)."""

import glob
import os
from pathlib import Path

from epsresnet_tf import jsonsafe
from epsresnet_tf.errors import UserError
from epsresnet_tf.figures import RUN, RUNS, registered
from epsresnet_tf.outputs import staged_outputs
from epsresnet_tf.report.data import RunData, read_runs
from epsresnet_tf.report.figures import FIGURE_FORMATS, paper_style
from epsresnet_tf.report.tables import tables
from epsresnet_tf.runfolder import REPORT, read_json

# --- the report folder -----------------------------------------------------------------

#: The report's record of itself: the runs, the groups, the summary rows and the names of
#: the files it wrote. Its presence says the folder is a report: running `report` again
#: replaces exactly those files (the user's own files stay) without --force.
MANIFEST = "report.json"
#: What --force replaces in a folder without a manifest (a report of an older version, or
#: any folder --out names): these names, other files stay.
REPORT_FILES = ("tables.md", "figures.md", MANIFEST, "*.png", "*.pdf", "*.svg")


def default_out(runs: list["RunData"]) -> Path:
    """One run: RUN/report; several: report/ in their common parent (runs/a, runs/b →
    runs/report)."""
    if len(runs) == 1:
        return runs[0].folder.report
    try:
        common = os.path.commonpath([os.path.normpath(r.root.parent) for r in runs])
    except ValueError:  # absolute and relative paths mixed
        common = os.path.commonpath([r.root.resolve().parent for r in runs])
    return Path(common or ".") / REPORT


def replaced_names(out: Path, force: bool) -> tuple[str, ...]:
    """Glob patterns of the entries of an existing `out` that a new report replaces: the
    files its manifest lists (a report folder: refreshed without --force), else with
    --force REPORT_FILES; UserError for a non-empty folder that is not a report."""
    if not out.is_dir() or not any(out.iterdir()):
        return REPORT_FILES
    manifest = out / MANIFEST
    if manifest.is_file():
        fix = f"delete {manifest} and run `epsresnet report` again with --force"
        files = read_json(manifest, fix).get("files", [])
        return (MANIFEST, *(glob.escape(name) for name in files))
    if force:
        return REPORT_FILES
    raise UserError(
        f"{out} is not empty and holds no {MANIFEST} (not a report of this version); pass "
        "--force to replace its tables and figures (other files stay) or --out another folder"
    )


def make_report(run_dirs, out=None, force=False):
    """tables.md, figures.md, the figures (PNG, PDF, SVG) and report.json into `out`
    (default_out); returns {"tables", "files", "rows", "groups", "skipped", "notes", "out"}."""
    runs, skipped = read_runs(run_dirs)
    out = Path(out) if out is not None else default_out(runs)
    owned = replaced_names(out, force)
    # Drawn into a folder beside `out` and swapped in at the end: a failure half-way through
    # the figures leaves the previous report whole (files that are not ours stay).
    with staged_outputs(out, owned=owned) as stage:
        written, text, rows = _write_report(runs, stage)
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["run"])
    return {
        "tables": text,
        "files": [str(out / name) for name in written],
        "rows": rows,
        "groups": groups,
        "skipped": skipped,
        "notes": [note for r in runs for note in r.notes],
        "out": str(out),
    }


def file_prefixes(runs: list["RunData"]) -> list[str]:
    """The prefix of each run's figure files: none for one run, else its name (with its
    parent's when two runs share a name)."""
    if len(runs) == 1:
        return [""]
    names = [r.name for r in runs]
    return [
        f"{r.root.resolve().parent.name}-{r.name}-" if names.count(r.name) > 1 else f"{r.name}-"
        for r in runs
    ]


def _draw_figures(runs, rows, out):
    """Every registered figure into `out`: [(PNG name, caption)]."""
    drawn = []
    with paper_style():
        for r, prefix in zip(runs, file_prefixes(runs)):
            for stem, draw, when in registered(RUN):
                path = out / f"{prefix}{stem}.png"
                caption = draw(r, path) if when(r) else False
                if caption is not False:
                    drawn.append((path.name, caption or ""))
        for stem, draw, _ in registered(RUNS) if len(runs) > 1 else ():
            path = out / f"{stem}.png"
            caption = draw(runs, rows, path)
            if caption is not False:
                drawn.append((path.name, caption or ""))
    return drawn


def _figures_md(drawn, out):
    """figures.md: each figure with its caption (which names its run in full)."""
    lines = ["# Figures", ""]
    for name, caption in drawn:
        stem = Path(name).stem
        files = [f"{stem}{s}" for s in FIGURE_FORMATS if (out / f"{stem}{s}").is_file()]
        formats = ", ".join(f"[{f.rsplit('.', 1)[1]}]({f})" for f in files)
        lines += [f"## {stem}", "", f"![{stem}]({name})", "", caption, "", formats, ""]
    return "\n".join(lines)


def _write_report(runs, out):
    """The report into `out`: (names written, tables text, summary rows)."""
    text, rows = tables(runs)
    (out / "tables.md").write_text(text + "\n")
    drawn = _draw_figures(runs, rows, out)
    (out / "figures.md").write_text(_figures_md(drawn, out))
    written = ["tables.md", "figures.md"] + sorted(
        p.name for p in out.iterdir() if p.suffix in FIGURE_FORMATS
    )
    manifest = {"runs": [str(r.root) for r in runs], "files": written, "summary": rows}
    (out / MANIFEST).write_text(jsonsafe.dumps(manifest, indent=2) + "\n")
    return [MANIFEST] + written, text, rows
