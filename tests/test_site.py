"The website: rendered from _quarto.yml, opened in headless Chromium over HTTP; pages load, figures show, no internal link is broken."
import functools, http.server, json, os, shutil, subprocess, tempfile, threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse, urldefrag
from urllib.request import urlopen
from urllib.error import HTTPError
import pytest
from depthstudy import course
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "dev"))
import sitebuild   # development tooling (dev/sitebuild.py), outside the package

CHROMEDRIVER, CHROMIUM = "/usr/bin/chromedriver", "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return sitebuild.render_site(tmp_path_factory.mktemp("site") / "_site")


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _ensure_chromium():
    "Install Debian's chromium and chromium-driver when missing; return why not when that is impossible."
    if Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists(): return None
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], env=env, capture_output=True)
    if Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists(): return None
    return "chromium / chromium-driver are not installed and apt-get could not install them (not root, or no apt)"


@pytest.fixture(scope="module")
def browser():
    why = _ensure_chromium()
    if why:
        print(f"SKIPPING browser tests: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="depthstudy-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        opts.add_argument(f)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _lesson_pages(site):
    return sorted(p.relative_to(site).as_posix() for p in (site / "lessons").glob("*.html"))


def test_site_has_every_part(site):
    assert (site / "index.html").exists() and (site / "api" / "index.html").exists()
    lessons = {l["name"] for l in course.list_lessons()}
    assert {Path(p).stem for p in _lesson_pages(site)} == lessons
    chapters = {p.stem for p in (course.repo_root() / "nbs").glob("[0-9]*.ipynb")}
    assert chapters and chapters <= {p.stem for p in site.glob("*.html")}
    assert (site / "api" / "course.html").exists() and "run_lesson" in (site / "api" / "course.html").read_text()


def test_pages_load_and_lesson_figures_show(site, server, browser):
    pages = ["index.html", "api/index.html", *_lesson_pages(site)]
    for page in pages:
        browser.get(server + page)
        state = browser.execute_script("return document.readyState")
        title, h1 = browser.title, browser.execute_script("const h = document.querySelector('h1'); return h ? h.innerText : ''")
        assert state == "complete" and title and h1.strip(), f"{page} did not load (title {title!r}, h1 {h1!r})"
        if page.startswith("lessons/"):
            widths = browser.execute_script(
                "return Array.from(document.querySelectorAll('main img, #quarto-content img, .cell-output img'))"
                ".map(i => [i.currentSrc.slice(0, 40), i.complete ? i.naturalWidth : 0])")
            broken = [src for src, w in widths if w <= 0]
            assert not broken, f"{page}: figures that do not show: {broken}"
            if page == "lessons/00_first_look.html":
                assert len(widths) >= 2, f"{page}: expected its two figures, found {len(widths)} img elements"
    assert "depthstudy" in browser.title


class _Links(HTMLParser):
    def __init__(self): super().__init__(); self.urls = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("href", "src"):
            if a.get(k) and not (tag == "a" and k == "src"): self.urls.append(a[k])


def test_no_internal_link_is_broken(site, server):
    checked, broken = {}, []
    for page in sorted(site.rglob("*.html")):
        base = server + page.relative_to(site).as_posix()
        p = _Links(); p.feed(page.read_text(encoding="utf-8"))
        for u in p.urls:
            if u.startswith(("data:", "mailto:", "javascript:", "#")): continue
            url = urldefrag(urljoin(base, u))[0]
            if not url.startswith(server): continue           # external: not ours to check
            if url not in checked:
                try: checked[url] = urlopen(url, timeout=10).status
                except HTTPError as e: checked[url] = e.code
            if checked[url] != 200: broken.append(f"{page.relative_to(site)} -> {u} ({checked[url]})")
    assert len(checked) > 20, f"only {len(checked)} internal links found"
    assert not broken, "broken internal links:\n" + "\n".join(broken[:30])


def test_site_shows_executed_lessons(tmp_path):
    "With executed_dir, the lesson page is the executed copy, not the stored one."
    src = course.find_lesson("00_first_look")
    nb = json.loads(src.read_text())
    nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": "EXECUTED-COPY-MARKER"})
    (tmp_path / "00_first_look").mkdir()
    (tmp_path / "00_first_look" / "00_first_look.ipynb").write_text(json.dumps(nb))
    stage = sitebuild.stage_site(executed_dir=tmp_path)
    assert "EXECUTED-COPY-MARKER" in (stage / "lessons" / "00_first_look.ipynb").read_text()
    assert "EXECUTED-COPY-MARKER" not in (stage / "index.ipynb").read_text()


def test_lessons_show_exercises_folded_solutions_and_questions(site, server, browser):
    """Every lesson page has an exercise, a 'Check your understanding' list and folded solutions: each <details> is
    closed when the page opens (its code not displayed) and opens on a click. Lessons 00-03 also run a worked
    solution through its check, so the page shows the check's verdict."""
    for page in _lesson_pages(site):
        browser.get(server + page)
        heads = browser.execute_script("return Array.from(document.querySelectorAll('h2, h3')).map(h => h.innerText)")
        assert any("Exercise" in h for h in heads), f"{page}: no exercise heading in {heads}"
        assert any("Check your understanding" in h for h in heads), f"{page}: no 'Check your understanding' section"
        folded = browser.execute_script(
            "return Array.from(document.querySelectorAll('details')).map(d => [d.open, d.querySelector('summary') ? "
            "d.querySelector('summary').innerText : '', (d.querySelector('pre, code') || d).getBoundingClientRect().height])")
        assert folded, f"{page}: no folded solution"
        assert all(not is_open and summary.strip() for is_open, summary, _ in folded), f"{page}: a solution is not folded: {folded}"
        opened = browser.execute_script(
            "const d = document.querySelector('details'); d.querySelector('summary').click(); "
            "const c = d.querySelector('pre, code'); return [d.open, c ? c.getBoundingClientRect().height : -1]")
        assert opened[0] and opened[1] > 0, f"{page}: the first solution does not open on a click ({opened})"
        if page.split("/")[-1][:2] in ("00", "01", "02", "03"):
            text = browser.execute_script("return document.body.innerText")
            assert "correct:" in text and "details.solution" not in text, f"{page}: no worked solution passing its check"
            assert browser.execute_script("return document.querySelectorAll('details.solution').length") >= 1, \
                f"{page}: no worked solution block (show_solution)"


# Small parameters for lesson 01: one generated task, one whose data set is missing (so the page says where the hub
# copy would be cached), no size ladder, no probes.
LESSON01_SMALL = dict(tasks='["facts", "truthfulqa-mc3"]', n_items="6", ladder="[]", mode="lens", faithful="false")


@pytest.mark.slow   # about 2 minutes: two real lesson runs and a site build
def test_site_from_a_real_run_shows_no_folder_of_this_machine(tmp_path, monkeypatch):
    """Build the site from real runs in a temporary folder, with the cache and data folders in it too (as when
    DEPTHSTUDY_CACHE / DEPTHSTUDY_DATA point outside the home folder): no file of the site, search.json included,
    holds the absolute path of the run folder, the cache, the data folder, the checkout or the home folder; nor do
    the executed notebooks' parameters and displayed outputs (what the sources print, before the site build's net)."""
    from depthstudy.models import prepare_embedded
    real = prepare_embedded("smollm2-135m", progress=False)           # in the usual cache: prepared once, shared
    cache, data = tmp_path / "cache", tmp_path / "data"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / real.name).symlink_to(real, target_is_directory=True)   # a cache of our own, no 20 s rebuild
    data.mkdir()                                                       # a data folder without the data sets
    monkeypatch.setenv("DEPTHSTUDY_CACHE", str(cache))
    monkeypatch.setenv("DEPTHSTUDY_DATA", str(data))
    monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")
    runs = tmp_path / "runs"
    course.run_lesson("00_first_look", {}, out_dir=runs, progress=False)
    course.run_lesson("01_bigger_deeper", LESSON01_SMALL, out_dir=runs, progress=False)
    site = sitebuild.render_site(tmp_path / "site", executed_dir=runs)

    home = str(Path.home())
    forbidden = {str(tmp_path), os.path.realpath(tmp_path), str(runs.resolve()), str(cache), str(data),
                 str(course.repo_root()), *([home + "/"] if home not in ("", "/") else [])}
    for name in ("00_first_look", "01_bigger_deeper"):
        nb = json.loads(course.executed_path(runs, name).read_text())
        assert nb["metadata"]["papermill"]["parameters"]["out_dir"] == "."
        shown = json.dumps([[c.get("source"), [o for o in c.get("outputs", []) if o.get("name") != "stderr"]]
                            for c in nb["cells"]])
        leaks = [p for p in forbidden if p in shown or p.replace("/", "\\/") in shown]
        assert not leaks, f"executed lesson {name} shows {leaks}"
    files = [f for f in site.rglob("*") if f.is_file()]
    assert (site / "search.json") in files and len(files) > 30
    leaks = [(f.relative_to(site).as_posix(), p) for f in files for p in forbidden
             if p.encode() in f.read_bytes() or p.replace("/", "\\/").encode() in f.read_bytes()]
    assert not leaks, f"the site shows folders of this machine: {leaks[:10]}"
    page = (site / "lessons" / "01_bigger_deeper.html").read_text(encoding="utf-8")
    assert "fetched once into $DEPTHSTUDY_CACHE/data" in page       # the data-source note was there, without the path
    assert "$DEPTHSTUDY_DATA/seed000/TruthfulQA.csv" in page
    assert '# Parameters out_dir = \\".\\"' in (site / "search.json").read_text(encoding="utf-8")   # papermill's injected cell


def test_site_build_hides_and_refuses_machine_paths(tmp_path, monkeypatch):
    "The site build's net: this machine's folders in a staged notebook are replaced; one left in a built page is found."
    monkeypatch.setenv("DEPTHSTUDY_CACHE", str(tmp_path / "c"))
    paths = dict(sitebuild.machine_paths(tmp_path / "runs"))
    assert paths[str(tmp_path / "runs")] == "runs" and paths[str(tmp_path / "c")] == "$DEPTHSTUDY_CACHE"
    assert paths[str(course.repo_root())] == "."
    nb = {"cells": [{"source": f"x = '{tmp_path}/runs/00/a.png'", "outputs": [{"text": f"cached at {tmp_path}/c/models\n"}]}],
          "metadata": {"papermill": {"input_path": f"{course.repo_root()}/nbs/lessons/00.ipynb"}}}
    out = sitebuild.hide_machine_paths(nb, sitebuild.machine_paths(tmp_path / "runs"))
    assert out["cells"][0]["source"] == "x = 'runs/00/a.png'"
    assert out["cells"][0]["outputs"][0]["text"] == "cached at $DEPTHSTUDY_CACHE/models\n"
    assert out["metadata"]["papermill"]["input_path"] == "./nbs/lessons/00.ipynb"
    assert sitebuild.hide_machine_paths({"s": f"{tmp_path}/cx /x{tmp_path}/c"}, [(str(tmp_path / "c"), "C")]) == \
        {"s": f"{tmp_path}/cx /x{tmp_path}/c"}                          # only whole folders, never inside another path
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "search.json").write_text(json.dumps({"t": f"{tmp_path}/c/data"}).replace("/", "\\/"))
    (tmp_path / "site" / "ok.html").write_text("<p>$DEPTHSTUDY_CACHE/data</p>")
    hits = sitebuild.find_machine_paths(tmp_path / "site", sitebuild.machine_paths())   # some JSON writes / as \/
    assert len(hits) == 1 and hits[0].startswith("search.json: ") and hits[0].endswith("\\/c"), hits
