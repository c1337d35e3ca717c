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


# The model's depth is stated once, in depthstudy.models (issue 27): how h[0..L] is read, how a block or sublayer is
# skipped, where the final norm and head are. Other modules go through Model's handles (resid, skip, readout and the
# *_module properties), never through nnsight's private attributes, hard-coded module paths or config names.
_DEPTH_LEAKS = {
    r"\._module\b": "nnsight's private _module (use Model.hf or the Model.*_module handles)",
    r"\.model\.(norm|layers|embed_tokens)\b|\blm_head\b|\btransformer\.(h|ln_f|wte)\b": "a hard-coded module path (use the Arch row)",
    r"rsplit\(\"\.\"": "a module path computed by hand (use Model.decoder_module)",
    r"\b(num_hidden_layers|n_layer|hidden_size|n_embd)\b": "a config name (use Model.n_layers / d_model)",
    r"\.norm\.input\b|\.blocks\[[^\]]+\]\.input\b": "h[l] read by hand (use Model.resid(l))",
    r"\.masked_fill_?\(|\.copy_\(torch\.where|torch\.where\(\s*(mk|mask)\b": "a skip written by hand (use Model.skip or Model.skipping)",
    r"register_forward_hook\(": "a forward hook that changes a module's output (skipping goes through Model.skipping)",
}
# The exercises' worked solutions (`*_solution`) teach the student to write the nnsight reads themselves: they may
# spell them out, as the student will.
def _code_outside_solutions(mod: str, text: str) -> str:
    if mod != "exercises": return text
    lines = text.splitlines()
    for n in ast.parse(text).body:
        if isinstance(n, ast.FunctionDef) and n.name.endswith("_solution"):
            for i in range(n.lineno - 1, n.end_lineno): lines[i] = ""
    return "\n".join(lines)


def test_the_models_depth_is_stated_only_in_models():
    found = []
    for f in sorted(PKG.glob("*.py")):
        if f.stem in ("models", "_modidx"): continue
        text = _code_outside_solutions(f.stem, f.read_text(encoding="utf-8"))
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for pat, what in _DEPTH_LEAKS.items():
                if re.search(pat, code) and not code.lstrip().startswith(('"', "'")):
                    found.append(f"{f.name}:{i}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_the_checker_sees_a_depth_leak(tmp_path):
    "The scan above is not vacuous: each pattern matches the line it is meant to catch."
    leaks = ["norm = model.norm._module", "x = hf.model.norm(h)", "base = arch.blocks.rsplit(\".\", 1)[0]",
             "L = cfg.num_hidden_layers", "h = m.blocks[l].input", "a.masked_fill_(mk, 0.0)",
             "sub.register_forward_hook(zero)"]
    for line, (pat, _) in zip(leaks, _DEPTH_LEAKS.items()):
        assert re.search(pat, line), (pat, line)


def test_skipping_is_implemented_once():
    """One rule of skipping (`models.skipped`), applied by the traced engine (`Model.skip`) and the direct engine
    (`Model.skipping`), and by nothing else: the rule's two operations appear once each in the package, in `skipped`,
    and the engines call it. The engines agree on every Arch row in tests/test_skip.py and in 06_models."""
    text = (PKG / "models.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    fns = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    rule = ast.get_source_segment(text, fns["skipped"])
    for op in ("torch.where(", ".masked_fill"):                  # the other modules: test_the_models_depth_is_stated_only_in_models
        assert rule.count(op) == 1, f"skipped() spells {op} once"
        assert text.count(op) == 1, f"{op} appears {text.count(op)} times in models.py, once is in skipped()"
    for engine in ("skip", "skipping"):
        calls = {n.func.id for n in ast.walk(fns[engine]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "skipped" in calls, f"Model.{engine} applies the rule"
