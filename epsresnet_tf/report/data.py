"""Reading run folders for a report: each run's config, history, certificate and ablations
(RunData), the runs' comparison groups and the summary rows the tables and figures show."""

import json
from pathlib import Path

from epsresnet_tf import compress as C
from epsresnet_tf.errors import UserError
from epsresnet_tf.naming import sort_block_ids
from epsresnet_tf.runfolder import CONFIG, RunFolder, last_val_error, read_run

# --- reading a run ---------------------------------------------------------------------


class RunData:
    def __init__(self, run_dir):
        self.run = read_run(run_dir)
        self.root = self.run.root
        self.folder = RunFolder(self.root)
        self.name = self.root.resolve().name  # `report .` is named after the folder
        history = self.folder.history_rows()
        self.rows = history.rows
        #: What `report` says about this run before its tables (one line each).
        self.notes = []
        if history.cut_short:
            self.notes.append(
                f"{self.folder.history}: the last line is cut short (a kill while it was "
                f"written) and is left out; reporting its {len(self.rows)} whole epochs"
            )
        self.certificate = self.folder.read_certificate()
        self.ablations = self.folder.read_ablations()

    @property
    def epsilon(self):
        if self.rows and self.rows[-1].get("epsilon") is not None:
            return float(self.rows[-1]["epsilon"])
        return self.run.config.get("epsilon")

    def block_ids(self):
        if self.certificate:
            return sort_block_ids(self.certificate["blocks"])
        if self.rows and self.rows[-1].get("blocks"):
            return sort_block_ids(self.rows[-1]["blocks"])
        return []

    def discarded(self, threshold=C.EMA_THRESHOLD):
        """Blocks that went: the certificate's removals, else the last EMAs' (authors' rule)."""
        if self.certificate:
            return set(self.certificate["removed"])
        if self.rows and self.rows[-1].get("blocks"):
            return set(C.ema_removable(self.rows[-1]["blocks"], threshold))
        return set()

    def final_error(self):
        return last_val_error(self.rows)


def summary_rows(runs):
    """One dict per run: error and size of the full and reduced nets (paper Figs. 6–7), and
    the run's comparison group (`comparison_groups`)."""
    out = []
    for r, group in zip(runs, comparison_groups(runs)):
        c = r.certificate
        err = r.final_error()
        row = {
            "run": r.name,
            "dataset": r.run.dataset,
            "arch": r.run.arch,
            "group": group,
            "epsilon": r.epsilon,
            "error_full": err,
            "error_reduced": None,
        }
        if c:
            b, a = c["before"], c["after"]
            eq = c["equivalence"]
            if "error_full" in eq:  # measured on the whole test split by `compress`
                row.update(
                    error_full=eq["error_full"],
                    error_reduced=eq["error_reduced"],
                    error_source="test split (compress check)",
                )
            else:  # identical predictions: the reduced net's error is the full one's
                row["error_reduced"] = err if eq["passed"] else None
            row.update(
                blocks_full=c["blocks_before"],
                blocks_reduced=c["blocks_after"],
                layers_full=b["layers"],
                layers_reduced=a["layers"],
                params_full=b["trainable_params"],
                params_reduced=a["trainable_params"],
                memory_full=b["param_bytes"],
                memory_reduced=a["param_bytes"],
                layer_compression=b["layers"] / a["layers"],
                discarded_fraction=c["removed_count"] / max(c["blocks_before"], 1),
                max_logit_diff=c["equivalence"]["max_abs_logit_diff"],
            )
            dep = c.get("deployment")  # certificates since deployment was decided (issue 26)
            if dep:
                row.update(
                    error_deployed_alone=dep["test_error"]["batch_1"],
                    error_gated_alone=(
                        dep["gated_test_error"]["batch_1"] if dep["gates"] else None
                    ),
                )
        else:
            n = len(r.block_ids())
            row.update(
                blocks_full=n,
                blocks_reduced=n - len(r.discarded()),
                discarded_fraction=len(r.discarded()) / n if n else None,
            )
        out.append(row)
    return out


# --- several runs: comparable groups and the ε figure ---------------------------------

#: The config keys that make two runs' ε comparable besides dataset and architecture: the
#: training schedule (runs of other schedules are not on one ε trend).
SCHEDULE_KEYS = ("epochs", "steps_per_epoch", "lr_schedule", "adaptive_schedule")


def comparison_groups(runs: list["RunData"]) -> list[str]:
    """The group label of each run: runs share a group (one ε trend line) only with runs of
    the same dataset, architecture and schedule (SCHEDULE_KEYS)."""
    keys = [
        (r.run.dataset, r.run.arch, json.dumps([r.run.config.get(k) for k in SCHEDULE_KEYS]))
        for r in runs
    ]
    labels = {}
    for key, r in zip(keys, runs):
        if key not in labels:
            epochs = r.run.config.get("epochs")
            labels[key] = f"{key[0]}, {key[1]}" + (f", {epochs} epochs" if epochs else "")
    taken = [labels[k] for k in dict.fromkeys(keys)]  # same words, other lr schedule
    for n, key in enumerate(dict.fromkeys(keys), 1):
        if taken.count(labels[key]) > 1:
            labels[key] += f", schedule {n}"
    return [labels[k] for k in keys]


def read_runs(paths: list) -> tuple[list["RunData"], list[str]]:
    """The run folders among `paths` and one line for each path skipped (not a run folder:
    no config.json, e.g. `runs/report` from `runs/*`); UserError when none is a run."""
    if not paths:
        raise UserError("give at least one run folder")
    runs, skipped = [], []
    for path in map(Path, paths):
        if RunFolder.is_run_folder(path):
            runs.append(RunData(path))
        else:
            skipped.append(f"skipped {path}: not a run folder (no {CONFIG})")
    if not runs and len(paths) == 1:
        RunFolder(paths[0]).read_config()  # its own one-line error
    if not runs:
        raise UserError(
            f"none of the {len(paths)} paths is a run folder (one holds the {CONFIG} "
            f"`epsresnet train` wrote), e.g. {paths[0]}"
        )
    return runs, skipped
