"""The package's import graph (issue: no circles, enforced): read from the source with
function-level imports included, it has no circle; an import inside a function is for a
heavy module only (tests/_import_rules.HEAVY, or a package module that loads one)."""

import json
import subprocess
import sys

import _import_rules as R


def test_the_circle_finder_finds_a_circle_through_a_function_level_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert R.circles(edges) == [["a", "b", "c"]]
    assert R.circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circle():
    found = R.circles(R.graph())
    assert found == [], "import circles (move the shared fact to a lower module): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_graph_sees_imports_inside_functions():
    # gates/eps.py imports TensorFlow in a function: the reader must see it there
    inside = [i for i in R.imports() if i.module == "epsresnet_tf.gates.eps" and i.in_function]
    assert any("tensorflow" in i.top_level_packages() for i in inside)


def test_imports_inside_functions_are_for_heavy_modules_only():
    known, heavy = R.modules(), R.heavy_modules()
    misplaced = [
        i
        for i in R.imports()
        if i.in_function
        and not i.top_level_packages() & set(R.HEAVY)
        and not any(R.package_module(t, known) in heavy for t in i.targets)
    ]
    assert misplaced == [], "move these imports to the top of their module: " + "; ".join(
        map(repr, misplaced)
    )


def test_the_modules_called_light_import_nothing_heavy():
    # The static reading against Python itself: each module it calls light, imported in a
    # fresh interpreter, loads no heavy module (a PEP 562 __getattr__ would hide one).
    # (__main__ modules are entry points: importing one runs its command)
    light = sorted(m for m in set(R.modules()) - R.heavy_modules() if not m.endswith(".__main__"))
    code = (
        "import importlib, json, sys\n"
        f"heavy = {list(R.HEAVY)!r}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    importlib.import_module(name)\n"
        "    loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "    if loaded:\n"
        "        print(name, loaded)\n"
        "        break\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(light)],
        cwd=R.PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"a light module loads a heavy one: {done.stdout}"
    assert "epsresnet_tf.cli" in light and "epsresnet_tf.config" in light
