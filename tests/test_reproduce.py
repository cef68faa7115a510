"""`make reproduce` (epsresnet_tf/reproduce/): the document's tables regenerated from a
fixture of run folders equal the checked-in expected text, the verdict rules give the
verdicts the fixture was built for, and the GPU list resolves to existing recipes."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from epsresnet_tf import recipes
from epsresnet_tf.reproduce import doc, gpu, measure, pieces
from epsresnet_tf.reproduce import runner as runner_module
from epsresnet_tf.reproduce.pieces import steps_of
from epsresnet_tf.reproduce.steps import DEFAULT_DATA, Ablate, Compress, Describe, Train
from epsresnet_tf.reproduce.verdicts import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PENDING,
    REPRODUCED,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "repro"
REPO = Path(__file__).resolve().parents[1]


def verdicts(root=FIXTURE):
    return {p.key: p.measure(p, root).verdict for p in pieces.PIECES}


def test_document_regenerated_from_the_fixture_equals_the_expected_text():
    """The document cannot drift from the code: regenerate EXPECTED.md (make_fixture.py
    says how) only for a deliberate change, and read the diff."""
    assert doc.render(FIXTURE, DEFAULT_DATA) == (FIXTURE / "EXPECTED.md").read_text()


def test_the_fixture_gives_the_verdicts_it_was_built_for():
    assert verdicts() == {
        "params": REPRODUCED,  # real describe outputs; ResNet-1001's 10.2M leaves BN out
        "dynamic": REPRODUCED,  # ε = 5: one born closed, one more in epoch 3, a reset
        "eps-sweep": REPRODUCED,  # 0, 1, 2, 2, 4 blocks at ε = 2.5 … 8
        "groups": REPRODUCED,  # 1/8, 3/8, 5/8 from input to output
        "reduced": REPRODUCED,  # same error, fewer parameters
        "mnist-table": NOT_REPRODUCED,  # both nets fail (the issue's 40-epoch result)
        "removal": REPRODUCED,  # the gated curve rises 4x slower
        "unit-order": NOT_TESTABLE,  # 1 point apart on 1,017 images: noise
    }


def test_a_missing_run_makes_its_pieces_pending(tmp_path):
    root = tmp_path / "repro"
    shutil.copytree(FIXTURE, root)
    shutil.rmtree(root / "mnist" / "gates-mnist-plain-50-gated")
    shutil.rmtree(root / "digits" / "repro-digits-eps_epsilon5.0")
    got = verdicts(root)
    assert got["mnist-table"] == PENDING
    assert got["dynamic"] == PENDING  # the warm-up run is unfinished, none reproduced
    assert got["eps-sweep"] == PENDING  # a rule over all runs waits for them
    sweep = pieces.get("eps-sweep")
    assert "so far discarded blocks [0, 1, 2, 4] rise" in sweep.measure(sweep, root).why


def test_an_uncompressed_run_counts_the_blocks_its_averages_call_discarded(tmp_path):
    root = tmp_path / "repro"
    shutil.copytree(FIXTURE, root)
    run = Train("digits", "repro-digits-eps", epsilon=6.0)
    (run.run_dir(root) / "reduced" / "certificate.json").unlink()
    got = measure.discards(run, root)
    assert got["source"] == "last epoch's averages"
    assert got["removed"] == {"group1/block1", "group2/block1"}
    reduced = pieces.get("reduced")
    assert reduced.measure(reduced, root).verdict == PENDING  # its compress step is to come


def test_a_run_that_discarded_every_block_says_nothing_about_groups(tmp_path):
    root = tmp_path / "repro"
    shutil.copytree(FIXTURE, root)
    cert_path = root / "digits" / "repro-digits-eps_epsilon8.0" / "reduced" / "certificate.json"
    cert = json.loads(cert_path.read_text())
    cert["removed"] = [f"group{g}/block{b}" for g in range(3) for b in range(2)]
    cert_path.write_text(json.dumps(cert))
    groups = pieces.get("groups")
    result = groups.measure(groups, root)
    assert result.tables[0].rows[-1] == ["all runs above", "", "0/6", "2/6", "3/6"]
    assert "repro-digits-eps_epsilon8.0" not in [row[0] for row in result.tables[0].rows]


def test_dynamic_facts_separate_born_closed_blocks_from_later_ones():
    rows = [
        json.loads(line)
        for line in (FIXTURE / "digits" / "repro-digits-eps_epsilon5.0" / "history.jsonl")
        .read_text()
        .splitlines()
    ]
    cfg = json.loads(
        (FIXTURE / "digits" / "repro-digits-eps_epsilon5.0" / "config.json").read_text()
    )
    facts = measure.dynamic_facts(rows, epochs=6, cfg=cfg)
    assert facts["closed_first"] == 1.0
    assert facts["rises"] == [(3, 1.0)]
    assert facts["resets"] == [3]  # the rule replayed: one more block in epoch 3 resets
    # the authors' comparison holds on the history itself: `hist_max < hist_first + threshold`
    # (LearningRateSetter.py:74) is false for epochs 2 → 3, so their rule resets after epoch 3
    first, last = rows[1]["discarded_count"], rows[2]["discarded_count"]
    assert (first, last) == (1.0, 2.0) and not max(first, last) < first + 1
    exact = dict(cfg, reset_tolerance=0.0)  # and the package's rule at tolerance 0 agrees
    assert measure.dynamic_facts(rows, epochs=6, cfg=exact)["resets"] == [3]
    assert (
        measure.dynamic_facts(rows, epochs=6, cfg=dict(cfg, adaptive_schedule=None))["resets"] == []
    )
    assert facts["saturated"] and facts["finished"]
    warm = [dict(r, epsilon=0.0 if r["epoch"] < 3 else 5.0) for r in rows]
    assert measure.dynamic_facts(warm, epochs=6)["on"] == 3
    assert (
        measure.dynamic_facts(warm, epochs=6)["rises"] == []
    )  # the epoch-3 rise is at the switch-on


@pytest.mark.parametrize(
    "counts, verdict",
    [
        ([0, 1, 2, 2, 4], REPRODUCED),
        ([0, 0, 0, 6], NOT_REPRODUCED),  # the issue's sweep: monotone, one non-zero point
        ([0, 3, 1], NOT_REPRODUCED),
        ([0, 1], PENDING),
    ],
)
def test_sweep_rule(counts, verdict):
    assert measure.sweep_verdict(counts)[0] == verdict


def test_groups_rule_reads_the_issues_reversed_case_as_not_reproduced():
    assert measure.groups_verdict([(3, 5), (2, 5), (1, 5)])[0] == NOT_REPRODUCED
    assert measure.groups_verdict([(1, 5), (1, 5), (3, 5)])[0] == REPRODUCED


def test_mnist_rule():
    assert measure.mnist_verdict({"plain-50": 0.6037, "plain-50-gated": 0.0136})[0] == REPRODUCED
    assert measure.mnist_verdict({"plain-50": 0.87, "plain-50-gated": 0.86})[0] == NOT_REPRODUCED
    assert measure.mnist_verdict({"plain-50": 0.87})[0] == PENDING


def test_published_counts_are_matched_at_their_printed_precision():
    assert measure.matches(1_727_962, 1.7)  # He et al.'s "1.7M" ResNet-110
    assert measure.matches(13_612_072, 13.6)
    assert not measure.matches(1_900_000, 1.7)
    # ResNet-1001: 10.2M is the count without BatchNorm's γ and β; 1.3% over with them
    described = {"trainable_params": 10_327_706, "trainable_params_without_bn": 10_178_490}
    assert not measure.matches(described["trainable_params"], 10.2)
    assert measure.count_matches(described, 10.2)
    assert not measure.count_matches({"trainable_params": 10_327_706}, 10.2)  # older output
    assert not measure.count_matches(dict(described, trainable_params_without_bn=9_000_000), 10.2)


def test_describe_counts_parameters_without_batchnorm(capsys):
    from epsresnet_tf import cli

    assert cli.main(["describe", "cifar-basic-8", "--json", "--classes", "10"]) == 0
    d = json.loads(capsys.readouterr().out)
    # ResNet-8: 7 BatchNorms of 16, 16, 16, 32, 32, 64, 64 channels (the pre-activation
    # units' two each, the last one before pooling), γ and β each
    assert d["trainable_params"] - d["trainable_params_without_bn"] == 2 * 240


def test_every_piece_step_is_in_make_reproduces_order_once():
    keys = [s.key() for s in pieces.ORDER]
    assert len(keys) == len(set(keys))
    for piece in pieces.PIECES:
        assert set(piece.steps) <= set(pieces.ORDER), piece.key
    # one piece runs its own steps only, in make reproduce's order
    removal = steps_of(["removal"])
    assert set(removal) == set(pieces.get("removal").steps)
    assert removal == [s for s in pieces.ORDER if s in removal]
    assert {p.key for p in pieces.PIECES} == set(_makefile_list("REPRO_PIECES"))


def test_every_training_step_names_an_existing_recipe_and_its_dataset():
    for step in pieces.ORDER:
        run = step.run if isinstance(step, (Compress, Ablate)) else step
        if isinstance(run, Train):
            config = recipes.resolve(run.recipe, depth=run.depth, epsilon=run.epsilon)[1]
            assert config["dataset"] == run.dataset, run.recipe


def test_runner_skips_finished_steps_and_waits_for_unfinished_runs(tmp_path):
    root = tmp_path / "repro"
    shutil.copytree(FIXTURE, root)
    done = Train("digits", "repro-digits-eps")
    unfinished = Train("digits", "repro-digits-eps-warmup", epsilon=5.0)
    said = []
    summary = runner_module.run_steps(
        [done, Compress(done), Compress(unfinished)], root, DEFAULT_DATA, said.append
    )
    assert summary["skipped"] == [done.key(), Compress(done).key()]
    assert summary["waiting"] == [Compress(unfinished).key()]
    assert summary["ran"] == summary["failed"] == []


def test_describe_step_writes_the_cli_json(tmp_path):
    step = Describe("params", "cifar-basic-20", 10)
    assert runner_module.run_step(step, tmp_path, DEFAULT_DATA) == 0
    stats = json.loads(step.path(tmp_path).read_text())
    # independent count: 3x3 convs, BN γ/β of the pre-activations and the last BN, FC
    convs = 9 * (3 * 16 + 6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64)
    bns = 2 * (6 * 16 + 16 + 5 * 32 + 32 + 5 * 64 + 64)
    assert stats["blocks"] == 9 and stats["trainable_params"] == convs + bns + 64 * 10 + 10
    log = [
        json.loads(line) for line in (tmp_path / "params" / "steps.jsonl").read_text().splitlines()
    ]
    assert log[0]["command"] == "epsresnet describe cifar-basic-20 --json --classes 10"
    assert log[0]["machine"]["cores"] >= 1


def test_gpu_tables_resolve_to_existing_recipes_with_a_published_entry():
    names = set(recipes.available())
    for table in gpu.TABLES:
        assert set(table.recipes) <= names, table.key
        assert set(table.published) == set(table.recipes)
        assert gpu.steps(table)  # every recipe resolves
    assert gpu.get("eps-cifar100").published["cifar100-eps-752"].startswith("Fig. 1: 24.8%")


def test_make_n_reproduce_gpu_runs_one_command_per_table():
    out = subprocess.run(
        ["make", "-n", "reproduce-gpu", "GPUS=2", "DATA=/data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if "epsresnet_tf.reproduce gpu" in line]
    assert [line.split(" gpu ")[1].split()[0] for line in lines] == [t.key for t in gpu.TABLES]
    assert all("--data-dir /data" in line and "--gpus 2" in line for line in lines)


def _makefile_list(name):
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(name):
            return line.split(":=", 1)[1].split()
    raise AssertionError(f"{name} not in the Makefile")
