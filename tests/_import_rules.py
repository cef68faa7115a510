"""The package's import graph, read from its source (function-level imports included), and
the one list of third-party modules heavy enough to import only where they are used."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "epsresnet_tf"

#: Modules whose import costs seconds or pulls in a GPU runtime: imported inside the
#: functions that use them, so `epsresnet --help` and the light commands start at once.
HEAVY = (
    "tensorflow",
    "keras",
    "tensorboard",
    "tensorpack",
    "matplotlib",
    "cv2",
    "sklearn",
    "scipy",
    "h5py",
    "torch",
    "absl",
    "ai_edge_litert",
    "onnxruntime",
    "tf2onnx",
    "mpl_toolkits",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(name: str, path: Path, node) -> list[str]:
    """Every dotted name an import statement may load (`from a import b`: a and a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
        base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""])
        base = base.rstrip(".")
    else:
        base = node.module
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


class Import:
    """One import statement: where it is, what it loads, whether it sits in a function, and
    whether it is for type checkers only (`if TYPE_CHECKING:`, never run)."""

    def __init__(self, module, line, targets, in_function, typing_only=False):
        self.module, self.line, self.targets = module, line, targets
        self.in_function, self.typing_only = in_function, typing_only

    def top_level_packages(self) -> set[str]:
        return {t.split(".")[0] for t in self.targets}

    def __repr__(self):
        where = "in a function" if self.in_function else "at module level"
        return f"{self.module}:{self.line} {where} imports {self.targets[0]}"


def _statements(node) -> set[int]:
    return {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}


def imports() -> list[Import]:
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        nested, typing_only = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested |= _statements(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                typing_only |= _statements(node)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _targets(name, path, node)
                nid = id(node)
                found.append(Import(name, node.lineno, targets, nid in nested, nid in typing_only))
    return found


def package_module(target: str, known) -> str | None:
    """The package module a dotted import target loads (`a.b.func` -> `a.b`), or None."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in it. A module's own parent
    packages are left out: Python imports them first, they cannot close a circle on it."""
    known = modules()
    edges = {name: set() for name in known}
    for imp in imports():
        for target in imp.targets:
            to = package_module(target, known)
            if to and to != imp.module and not imp.module.startswith(to + "."):
                edges[imp.module].add(to)
    return edges


def circles(edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def heavy_modules() -> set[str]:
    """Package modules that load a HEAVY module when imported (through their module-level
    imports, or their parent packages')."""
    known = modules()
    top = {name: set() for name in known}
    loads_heavy = set()
    for imp in imports():
        if imp.in_function or imp.typing_only:
            continue
        if imp.top_level_packages() & set(HEAVY):
            loads_heavy.add(imp.module)
        for target in imp.targets:
            to = package_module(target, known)
            if to and to != imp.module:
                top[imp.module].add(to)
    for name in known:  # a module's parent packages are imported with it
        parts = name.split(".")
        top[name] |= {".".join(parts[:i]) for i in range(1, len(parts))} & set(known)
    changed = True
    while changed:
        changed = False
        for name, deps in top.items():
            if name not in loads_heavy and deps & loads_heavy:
                loads_heavy.add(name)
                changed = True
    return loads_heavy
