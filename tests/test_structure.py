"""The package's shape: modules in layers. Parses every module's imports (those inside functions too) and fails on an
import circle, on a cross-module import of a private name, and on a notebook numbered before a module it uses."""
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "depthstudy"


def _imports():
    "module -> {imported depthstudy module: [names imported from it]} for every module of the package, at any depth."
    out = {}
    for f in sorted(PKG.glob("*.py")):
        mod = f.stem
        if mod.startswith("_"): continue
        deps = out.setdefault(mod, {})
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:                                  # from .x import y / from . import x
                    base = node.module.split(".")[0] if node.module else None
                    targets = [(base, [a.name for a in node.names])] if base else [(a.name, []) for a in node.names]
                elif node.module and node.module.split(".")[0] == "depthstudy":
                    parts = node.module.split(".")
                    targets = [(parts[1], [a.name for a in node.names])] if len(parts) > 1 else [(a.name, []) for a in node.names]
                else: continue
                for t, names in targets: deps.setdefault(t, []).extend(names)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == "depthstudy" and len(parts) > 1: deps.setdefault(parts[1], [])
    return out


def test_no_import_circle():
    graph = {m: set(d) - {m} for m, d in _imports().items()}
    state, path = {}, []
    def visit(m):
        state[m] = "open"; path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open": pytest.fail("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state: visit(n)
        state[m] = "done"; path.pop()
    for m in sorted(graph):
        if m not in state: visit(m)


def test_no_private_name_crosses_a_module():
    bad = [f"{m} imports {n} from {t}" for m, deps in _imports().items() for t, names in deps.items()
           for n in names if t != m and n.startswith("_")]
    assert not bad, bad


def test_notebooks_are_numbered_in_dependency_order():
    "A module's notebook number is above the numbers of the notebooks of every module it imports."
    number = {}
    for nb in (ROOT / "nbs").glob("[0-9]*.ipynb"):
        src = "".join("".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code")
        m = re.search(r"^#\|\s*default_exp\s+(\w+)", src, re.M)
        if m: number[m.group(1)] = int(nb.name.split("_")[0])
    imports = _imports()
    assert set(number) == set(imports), "every module comes from one numbered notebook"
    late = [f"{m} ({number[m]:02d}) imports {t} ({number[t]:02d})" for m, deps in imports.items() for t in deps
            if t != m and t in number and number[t] >= number[m]]
    assert not late, late


def test_the_checker_sees_imports_inside_functions():
    "The parser is not blind (a test of the test): course imports depthstudy.models only inside a function."
    assert "models" in _imports()["course"]
    assert not re.search(r"^from depthstudy.models", (PKG / "course.py").read_text(), re.M)


def test_installed_package_imports_no_dev_only_dependency():
    "smalldocs (the site builder) and nbdev stay out of the package: only dev/ uses them."
    for f in PKG.glob("*.py"):
        text = f.read_text(encoding="utf-8")
        for dev in ("smalldocs", "nbdev", "fastcore", "selenium", "jupytext"):
            assert not re.search(rf"^\s*(from|import)\s+{dev}\b", text, re.M), f"{f.name} imports {dev}"
