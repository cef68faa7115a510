"""The package as users install it: the wheel ships the recipes (the top-level
experiments/ folder, mapped to epsresnet_tf/experiments) and its `epsresnet` finds them;
a source checkout and an editable install read experiments/ itself."""

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import epsresnet_tf
from epsresnet_tf import recipes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "epsresnet_tf"
#: What a wheel is built from (MANIFEST.in carries the same into an sdist).
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "epsresnet_tf", "experiments")


def setup_options():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["options"]


def test_setup_cfg_lists_every_package_and_maps_the_recipes():
    options = setup_options()
    listed = options["packages"].split()
    # every folder of the package with an __init__.py (what setuptools' find: would list)
    found = [".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")]
    assert sorted(listed) == sorted(found + ["epsresnet_tf.experiments"])
    assert options["package_dir"].split() == ["epsresnet_tf.experiments", "=", "experiments"]


def test_a_source_checkout_reads_the_top_level_experiments_folder(monkeypatch):
    monkeypatch.delenv("EPSRESNET_EXPERIMENTS", raising=False)
    assert recipes._experiments_folder() == ROOT / "experiments"
    monkeypatch.setenv("EPSRESNET_EXPERIMENTS", "/elsewhere")
    assert recipes._experiments_folder() == Path("/elsewhere")


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def _run(*argv, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EPSRESNET_EXPERIMENTS")}
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow  # builds a wheel, makes a venv and trains the demo one tiny epoch: ~1-2 min
@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None,
    reason="building the wheel offline needs setuptools and pip in this environment",
)
def test_the_wheel_ships_the_recipes_and_its_command_trains_the_demo(tmp_path):
    src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    src.mkdir()
    _copy_sources(src)
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src, cwd=tmp_path)
    [wheel] = wheels.glob("epsresnet_tf-*.whl")
    # a fresh venv holding only the wheel; TensorFlow & co. from this environment through a
    # .pth (plain paths there: this environment's editable install of the package is not
    # activated, so the wheel's copy is the one imported)
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    site = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    )
    (Path(site.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = _run(
        python,
        "-c",
        "import epsresnet_tf.recipes as r; print(r.__file__); print(r.EXPERIMENTS)",
        cwd=tmp_path,
    )
    module, experiments = map(Path, where.split())
    assert module.is_relative_to(venv) and experiments == module.parent / "experiments"
    assert sorted(p.name for p in experiments.glob("*.json")) == sorted(
        p.name for p in (ROOT / "experiments").glob("*.json")
    )
    epsresnet = venv / "bin" / "epsresnet"
    assert _run(epsresnet, "--version", cwd=tmp_path) == f"epsresnet {epsresnet_tf.__version__}\n"
    listed = _run(epsresnet, "train", "--list", cwd=tmp_path).splitlines()
    assert any(line.split()[:1] == ["demo"] for line in listed)
    tiny = ("--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1", "--quiet")
    _run(epsresnet, "train", "demo", "--out", tmp_path, "--name", "run", *tiny, cwd=tmp_path)
    assert (tmp_path / "run" / "model.keras").is_file()
