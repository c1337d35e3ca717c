"""Development tooling, not part of the installed package: build the website (Quarto where installed, else smalldocs,
a dev-only dependency) and README.md from the notebooks.

    python dev/sitebuild.py render [--executed runs] [--out _site]   # the website
    python dev/sitebuild.py readme [--check]                         # README.md from nbs/index.ipynb

`make run` and `make test` call it; the functions are importable for tests (`sys.path` gets `dev/`).
"""
from __future__ import annotations
import argparse, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path
from depthstudy.config import cache_dir, show_path
from depthstudy.course import cell_source, executed_path, repo_root

_NBDEV_DIRECTIVES = re.compile(r"^#\|\s*(export|exports|exporti|exec_doc|hide_line|filter_stream|default_exp|eval\s*:\s*false\s*$)", re.I)

def _drop_cell(src: str) -> bool:
    "nbdev cells that never show on the site: `#| hide` and `#| default_exp`."
    return bool(re.search(r"^#\|\s*(hide|default_exp)\b", src, re.M))

def _site_notebook(nb: dict) -> dict:
    """A notebook ready for the site: title/summary heading turned into front matter, nbdev's own `#|` lines
    removed, hidden cells and stderr (progress bars, warnings) dropped, papermill's metadata cells kept."""
    cells = []
    for c in nb.get("cells", []):
        src = cell_source(c)
        if c.get("cell_type") == "code":
            if _drop_cell(src): continue
            lines = src.split("\n")
            keep = [l for l in lines if not (l.startswith("#|") and re.match(r"^#\|\s*(export|exports|exporti|exec_doc|hide_line|filter_stream)\b", l))]
            c = {**c, "source": "\n".join(keep),
                 "outputs": [o for o in c.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]}
        cells.append(c)
    for i, c in enumerate(cells):
        if c.get("cell_type") != "markdown": continue
        m = re.match(r"\s*#\s+(.+?)\s*\n(?:\s*\n)*(?:>\s*(.+?)\s*(?:\n|$))?(.*)", cell_source(c), re.S)
        if m:
            front = {"title": m.group(1)}
            if m.group(2): front["description"] = m.group(2)
            fm = "---\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in front.items()) + "---"
            rest = m.group(3).strip()
            cells[i:i + 1] = [{"cell_type": "raw", "metadata": {}, "source": fm}] + \
                             ([{**c, "source": rest}] if rest else [])
        break
    return {**nb, "cells": cells}

_GENERIC = {"/", "/tmp", "/var", "/var/tmp", "/usr", "/usr/local", "/opt", "/home", "/mnt", "/srv", "/private", "/private/tmp"}

def machine_paths(executed_dir=None, root=None) -> list[tuple[str, str]]:
    """The folders of this machine that no page of the site may show, each with what a page shows instead, innermost
    first: the executed lessons (as given when relative, such as `runs`, else by their folder's name), the checkout
    (`.`), a virtual environment (`$VIRTUAL_ENV`), and the cache, data and activation folders and the home folder as
    `show_path` writes them (`$DEPTHSTUDY_CACHE`, `~`, ...). Example: `dict(machine_paths("runs"))[os.path.abspath("runs")]` -> 'runs'."""
    places = []                                             # (folder, label); label None: as `show_path` writes it
    if executed_dir:
        e = Path(executed_dir).expanduser()
        places.append((e, e.resolve().name if e.is_absolute() else os.path.normpath(e)))
    places.append((root or repo_root(), "."))
    if sys.prefix != sys.base_prefix: places.append((sys.prefix, "$VIRTUAL_ENV"))
    places += [(os.environ.get(k), None) for k in ("DEPTHSTUDY_CACHE", "DEPTHSTUDY_ACTS", "DEPTHSTUDY_DATA", "XDG_CACHE_HOME")]
    places += [(cache_dir(), None), (Path.home(), "~")]
    out = {}
    for p, label in places:
        if not p: continue
        q = os.path.abspath(os.path.expanduser(str(p)))
        label = label or show_path(q)
        if label == q: label = "$DEPTHSTUDY_CACHE"            # only the cache can be named by nothing shorter
        for v in (q, os.path.realpath(q)):                  # a folder reached through a link shows under both names
            if v not in _GENERIC and v != tempfile.gettempdir() and v not in out: out[v] = label
    return sorted(out.items(), key=lambda x: -len(x[0]))

def _path_pattern(paths) -> re.Pattern | None:
    "Any of `paths` as a whole folder: not inside a longer name or path (`/a/root` is not `/root`), then `/` or the end."
    if not paths: return None
    alts = "|".join(re.escape(p) for p, _ in paths)
    return re.compile(rf"(?:(?<![\w.~/\\-])|(?<=file://))({alts})(?![\w.-])")

def hide_machine_paths(obj, paths):
    "`obj` (a notebook: dicts, lists, strings) with every folder of `paths` (from `machine_paths`) replaced by its label."
    pat, labels = _path_pattern(paths), dict(paths)
    if pat is None: return obj
    def fix(o):
        if isinstance(o, str): return pat.sub(lambda m: labels[m.group(1)], o)
        if isinstance(o, list): return [fix(x) for x in o]
        if isinstance(o, dict): return {k: fix(v) for k, v in o.items()}
        return o
    return fix(obj)

def find_machine_paths(folder, paths) -> list[str]:
    "Every `file: folder` where a text file under `folder` shows one of `paths` (plain or JSON-escaped `\\/`)."
    pat = _path_pattern(paths)
    if pat is None: return []
    esc = _path_pattern([(p.replace("/", "\\/"), l) for p, l in paths])
    hits = []
    for f in sorted(Path(folder).rglob("*")):
        if not f.is_file() or f.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".woff", ".woff2", ".ttf", ".ico"): continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in [*pat.finditer(text), *esc.finditer(text)]:
            hits.append(f"{f.relative_to(folder)}: {m.group(1)}")
    return sorted(set(hits))

def _write_api_index(stage: Path):
    "A landing page for the API reference: one line per module with its summary."
    import importlib
    rows = []
    for f in sorted((stage / "api").glob("*.qmd")):
        if f.name == "index.qmd": continue
        mod = f.stem if "." in f.stem else f"depthstudy.{f.stem}"
        try: summary = (importlib.import_module(mod).__doc__ or "").strip().split("\n")[0]
        except Exception: summary = ""
        rows.append(f"| [`{mod}`]({f.name}) | {summary} |")
    (stage / "api" / "index.qmd").write_text(
        "---\ntitle: API reference\ndescription: Every public function and class of depthstudy, module by module.\n---\n\n"
        "| module | what it is for |\n|---|---|\n" + "\n".join(rows) + "\n", encoding="utf-8")

def stage_site(executed_dir=None, root=None) -> Path:
    """Copy what the site shows into `<root>/_proc/`: the top-level `_quarto.yml`, `nbs/styles.css`, the notebooks of
    `nbs/` (chapters and index) and `nbs/lessons/` (replaced by their executed copies from `executed_dir` when there),
    each prepared with `_site_notebook` and with this machine's folders replaced (`hide_machine_paths`), and the API
    reference pages. Returns the staging folder."""
    root = Path(root) if root else repo_root()
    if root is None or not (root / "_quarto.yml").exists():
        raise FileNotFoundError("render_site needs a source checkout of depthstudy (nbs/ and _quarto.yml); "
                                "run it from the repository")
    stage = root / "_proc"
    if stage.exists(): shutil.rmtree(stage)
    (stage / "lessons").mkdir(parents=True)
    shutil.copy2(root / "_quarto.yml", stage / "_quarto.yml")
    for extra in ("styles.css",):
        if (root / "nbs" / extra).exists(): shutil.copy2(root / "nbs" / extra, stage / extra)
    srcs = [(p, stage / p.name) for p in sorted((root / "nbs").glob("*.ipynb"))]
    for p in sorted((root / "nbs" / "lessons").glob("*.ipynb")):
        ex = executed_path(executed_dir, p.stem) if executed_dir else None
        srcs.append((ex if ex is not None and ex.exists() else p, stage / "lessons" / p.name))
    paths = machine_paths(executed_dir, root)
    for s, d in srcs:
        nb = json.loads(s.read_text(encoding="utf-8"))
        d.write_text(json.dumps(hide_machine_paths(_site_notebook(nb), paths), indent=1), encoding="utf-8")
    from smalldocs import api
    api.build(api.Settings(site=stage, packages=["depthstudy"], out="api", root=root))
    _write_api_index(stage)
    return stage

def check_site_folder(out) -> Path:
    """Check that `out` may receive a built site, which replaces the folder: it must be new, empty or an earlier site
    (it holds `index.html`), and writable. A file, another non-empty folder, the working directory or a folder above
    it raises `ValueError`, so a mistyped `--site .` never deletes anything. Example: `check_site_folder("_site")`."""
    from depthstudy.results import check_output_folder
    p = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        raise ValueError(f"site folder {p} is the working directory or a folder above it; rendering replaces the site "
                         "folder, so give a folder of its own, such as _site")
    if p.is_dir() and any(p.iterdir()) and not (p / "index.html").is_file():
        raise ValueError(f"site folder {p} is not empty and holds no index.html, so it is not an earlier site; rendering "
                         "replaces the folder, so give a new or empty folder, such as _site")
    check_output_folder(p, "site folder")
    return p

def render_site(out="_site", executed_dir=None, root=None, quiet: bool = True) -> Path:
    """Build the website into `out`: home page, library chapters, lessons (with the executed outputs in `executed_dir`
    when given, else the outputs stored in the notebooks) and the API reference. Quarto renders it when `quarto` is on
    PATH, otherwise smalldocs (pure Python). `out` is checked first (`check_site_folder`), since it is replaced.
    A site that would still show a folder of this machine (`machine_paths`) is refused (`RuntimeError`), so one can
    publish it as it is. Returns the folder (open `index.html`). Example: `render_site("_site")`."""
    check_site_folder(out)
    stage = stage_site(executed_dir, root)
    built = stage / "_site"
    if shutil.which("quarto"):
        cmd = ["quarto", "render", str(stage), "--quiet"] if quiet else ["quarto", "render", str(stage)]
    else:
        cmd = [sys.executable, "-c", "import sys; from smalldocs.cli import main; sys.exit(main())", "render", str(stage)] + (["--quiet"] if quiet else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not (built / "index.html").exists():
        raise RuntimeError(f"site build failed ({' '.join(cmd[:2])}...):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    leaks = find_machine_paths(built, machine_paths(executed_dir, root))
    if leaks:
        raise RuntimeError(f"the built site would show folders of this machine, so it was not written to {out}: "
                           f"{'; '.join(leaks[:10])}{' ...' if len(leaks) > 10 else ''} (a bug of the site build: please report it)")
    out = Path(out).resolve()
    if out.exists(): shutil.rmtree(out)
    shutil.copytree(built, out)
    return out

_README_DROP = re.compile(r"^#\|\s*(hide|default_exp|include\s*:\s*false)\b", re.M)

def _spaced_headings(md: str) -> str:
    "A blank line after each Markdown heading (outside code fences), as most renderers expect."
    out, fence = [], False
    lines = md.split("\n")
    for i, l in enumerate(lines):
        if l.startswith("```"): fence = not fence
        out.append(l)
        if not fence and re.match(r"#{1,6} ", l) and i + 1 < len(lines) and lines[i + 1].strip(): out.append("")
    return "\n".join(out)

def readme_text(nb_path) -> str:
    """README Markdown from a notebook, without Quarto: markdown cells as they are, code cells as ```python blocks
    followed by their text outputs (indented four spaces; stderr and images left out), `#|` lines removed and
    `#| hide` cells dropped. Example: `readme_text("nbs/index.ipynb").startswith("# depthstudy")` -> True."""
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    parts = []
    for c in nb.get("cells", []):
        src = cell_source(c)
        if c.get("cell_type") == "markdown": parts.append(_spaced_headings(src.strip())); continue
        if c.get("cell_type") != "code" or _README_DROP.search(src): continue
        opts = "\n".join(l for l in src.split("\n") if l.startswith("#|"))
        code = "\n".join(l for l in src.split("\n") if not l.startswith("#|")).strip()
        if code and not re.search(r"echo\s*:\s*false", opts): parts.append(f"```python\n{code}\n```")
        if re.search(r"output\s*:\s*false", opts): continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout": text = cell_source({"source": o.get("text", "")})
            elif o.get("output_type") in ("execute_result", "display_data"):
                d = o.get("data", {})
                if "text/markdown" in d: parts.append(cell_source({"source": d["text/markdown"]}).strip()); continue
                text = cell_source({"source": d.get("text/plain", "")}) if not any(k.startswith("image/") for k in d) else ""
            else: continue
            if text.strip(): parts.append("\n".join("    " + l if l else "" for l in text.rstrip("\n").split("\n")))
    return "\n\n".join(p for p in parts if p) + "\n"

def build_readme(check: bool = False, root=None) -> bool:
    """Write `README.md` from `nbs/index.ipynb` (see `readme_text`). With `check=True` write nothing and raise
    `RuntimeError` if README.md differs from what the notebook gives (CI calls this). Returns True when it was current."""
    root = Path(root) if root else repo_root()
    if root is None: raise FileNotFoundError("build_readme needs a source checkout (nbs/index.ipynb)")
    text, readme = readme_text(root / "nbs" / "index.ipynb"), root / "README.md"
    current = readme.exists() and readme.read_text(encoding="utf-8") == text
    if check:
        if not current:
            raise RuntimeError("README.md is out of date with nbs/index.ipynb: run `depthstudy readme` (or "
                               "`python -c 'from depthstudy.course import build_readme; build_readme()'`) and commit it")
        return True
    if not current: readme.write_text(text, encoding="utf-8")
    return current

def main(argv=None) -> int:
    "`render` builds the site, `readme` writes (or `--check`s) README.md; a mistake ends in one line and status 2."
    p = argparse.ArgumentParser(prog="python dev/sitebuild.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="build the website")
    r.add_argument("--out", default="_site", help="folder the site is written to, replacing it (default: %(default)s)")
    r.add_argument("--executed", default=None, help="folder of executed lessons (from depthstudy reproduce)")
    m = sub.add_parser("readme", help="README.md from nbs/index.ipynb")
    m.add_argument("--check", action="store_true", help="only check that README.md is current (exit status 2 if not)")
    a = p.parse_args(argv)
    try:
        if a.command == "render": print(f"site written to {render_site(a.out, executed_dir=a.executed)}")
        else:
            build_readme(check=a.check)
            print("README.md is current" if a.check else "README.md written from nbs/index.ipynb")
    except (ValueError, RuntimeError, OSError) as e:
        print(f"sitebuild {a.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
