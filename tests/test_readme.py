"""README.md stays true: its `epsresnet` commands parse with the real parser (and name real
recipes), the `make` targets it names exist, its run-folder tree uses the run folder's own
names, and the files it points to are there. Nothing here imports TensorFlow."""

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from epsresnet_tf import cli, evaluate, recipes, report
from epsresnet_tf import runfolder as RF

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+$|[\[\]…|<>]")  # RECIPE, [--depth D], a|b


def blocks(lang):
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def prose():
    return FENCE.sub("", README)


def shell_commands():
    """argv of every command line in the README's sh blocks."""
    for body in blocks("sh"):
        for line in body.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                yield argv


def epsresnet_commands():
    """(text, argv after `epsresnet`) of every full command: sh blocks, and inline code
    that starts with `epsresnet ` and holds no placeholder."""
    for argv in shell_commands():
        if Path(argv[0]).name == "epsresnet":
            yield shlex.join(argv), argv[1:]
    for code in INLINE.findall(prose()):
        argv = code.split()
        if argv[0] == "epsresnet" and len(argv) > 1 and not any(map(PLACEHOLDER.search, argv)):
            yield code, argv[1:]


def make_targets():
    """Every `make TARGET` in the sh blocks (their comments too) and in inline code."""
    named = set(re.findall(r"`make ([\w-]+)", README))
    for body in blocks("sh"):
        named |= set(re.findall(r"\bmake ([a-z][\w-]*)", body))
    return sorted(named)


def test_the_readme_has_what_these_tests_read():
    commands = [text for text, _ in epsresnet_commands()]
    assert len(commands) >= 10 and any("train --list" in c for c in commands)
    assert {"demo", "test", "tensorboard", "install"} <= set(make_targets())


@pytest.mark.parametrize(
    "text, argv", dict(epsresnet_commands()).items(), ids=lambda v: str(v)[:50]
)
def test_each_epsresnet_command_parses_with_the_real_parser(text, argv):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = cli.build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help and --version exit 0; a bad command exits 2
        assert exit_.code == 0, f"{text}: {err.getvalue()}"
        return
    if args.command in ("train", "sweep-eps") and args.recipe:
        assert args.recipe in recipes.available(), f"{text}: no recipe {args.recipe}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", make_targets())
def test_each_make_target_named_exists(target):
    # -n: print what would run, run nothing; an unknown target is "No rule to make target"
    done = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def run_folder_layout():
    """{folder of a run ("" for the run folder itself): names allowed there}, from the
    modules that write them."""
    return {
        "": {
            RF.CONFIG,
            RF.DATA,
            RF.CHANGES,
            RF.HISTORY,
            RF.TENSORBOARD + "/",
            RF.CHECKPOINTS + "/",
            RF.MODEL,
            RF.REDUCED + "/",
            RF.ABLATION + "/",
            RF.REPORT + "/",
        },
        RF.REDUCED: {
            RF.REDUCED_MODEL,
            RF.REDUCED_RAW_MODEL,
            RF.SAVED_MODEL + "/",
            RF.CERTIFICATE,
        },
        RF.ABLATION: {f"{order}.json" for order in evaluate.ORDERS},
        RF.REPORT: {
            stem + suffix for stem, *_ in report.PER_RUN_FIGURES for suffix in report.FIGURE_FORMATS
        }
        | {name for name in report.REPORT_FILES if "*" not in name},
    }


def test_the_run_folder_tree_uses_the_run_folders_names():
    [tree] = [body for body in blocks("") if body.startswith("runs/demo/")]
    layout, listed, folder = run_folder_layout(), 0, ""
    for line in tree.splitlines():
        names = line.split("#")[0].split()
        if not line[0].isspace():  # "runs/demo/<entry>  <entries of that folder …>"
            first = names.pop(0).removeprefix("runs/demo/")
            assert first in layout[""], f"runs/demo/{first}"
            folder = first.rstrip("/") if first.endswith("/") else ""
            listed += 1
        for name in names:
            assert name in layout[folder], f"{name} in runs/demo/{folder}"
            listed += 1
    assert listed >= 18  # the tree shows the whole demo run


def test_named_checkpoint_files_are_the_run_folders():
    folder = RF.RunFolder(Path("runs/demo"))
    checkpoint = folder.checkpoint_path(15)
    for name in re.findall(r"`(epoch-\d+\.\w+)`", README):
        assert name in (checkpoint.name, RF.RunFolder.manifest_of(checkpoint).name), name
    assert f"`{checkpoint.name}`" in README


def test_files_the_readme_points_to_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    paths = [
        code
        for code in INLINE.findall(prose())
        if re.fullmatch(r"(epsresnet_tf|docs|benchmarks|data|experiments|tests)/[\w./-]*", code)
        or re.fullmatch(r"[A-Z]+\.md", code)
    ]
    paths += re.findall(r"\b((?:docs/)?[A-Z]+\.md)\b", README)
    assert len(links + paths) >= 10
    for path in links + paths:
        assert (ROOT / path).exists(), path


#: How a statement of how long something takes reads ("about a minute", "150 CPU-seconds").
TIME_CLAIM = re.compile(
    r"\b(\d+(\.\d+)?|a|a few)\s*(CPU-)?(seconds?|minutes?|hours?|s|min)\b", re.I
)


def test_the_times_of_make_demo_and_make_test_are_stated_once_measured_and_dated():
    """The README owns them, each with the machine and the date it was measured on; the
    Makefile's targets and the demo recipe point there instead of saying their own."""
    demo = re.search(r"make demo[^\n]*?(\n[^\n]+){0,12}?measured (\d{4}-\d{2}-\d{2})", README)
    test = re.search(r"make test\s+#[^\n]*measured (\d{4}-\d{2}-\d{2})", README)
    assert demo and test, "README: make demo's and make test's times, with the date measured"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        # the comment block right above the target
        comment = re.search(rf"((?:#[^\n]*\n)*)(?:[A-Z_]+ = [^\n]*\n)*{target}:", makefile)
        assert comment, target
        assert not TIME_CLAIM.search(comment.group(1)), (target, comment.group(1))
    description = recipes.resolve("demo")[1].get("description", "") or ""
    raw = (ROOT / "experiments" / "demo.json").read_text()
    assert not TIME_CLAIM.search(description + raw), "the demo recipe states its own time"
