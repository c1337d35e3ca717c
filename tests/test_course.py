"Lessons run with papermill: parameters checked before anything runs, outputs reflect them, secrets refused; README in sync."
import json, os, shutil, time
from pathlib import Path
import pandas as pd
import pytest
import papermill
from depthstudy import course
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "dev"))
import sitebuild   # development tooling (dev/sitebuild.py), outside the package

ROOT = Path(__file__).resolve().parents[1]
LESSON = "00_first_look"
PROMPT = "The capital of Italy is"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    t = time.time()
    nb = course.run_lesson(LESSON, {"prompt": PROMPT, "top_k": "2"}, out_dir=out, progress=False)
    return nb, time.time() - t


def test_lessons_are_listed_with_typed_parameters():
    ls = {l["name"]: l for l in course.list_lessons()}
    assert LESSON in ls and ls[LESSON]["title"] == "A first look at depth"
    ps = ls[LESSON]["parameters"]
    assert ps["model"]["default"] == "smollm2-135m" and ps["top_k"]["type"] == "int" and "out_dir" in ps
    assert course.lessons_dir() == ROOT / "nbs" / "lessons"


def test_run_lesson_outputs_reflect_parameters(executed):
    nb_path, seconds = executed
    assert seconds < 90, f"the first lesson took {seconds:.0f} s"
    nb = json.loads(nb_path.read_text())
    meta = nb["metadata"]["papermill"]
    assert meta["parameters"]["prompt"] == PROMPT and meta["parameters"]["top_k"] == 2
    assert meta["parameters"]["out_dir"] == "." and not meta.get("exception")   # relative: the kernel runs in the folder
    text = json.dumps(nb["cells"])
    assert f"prompt {PROMPT!r} -> next token" in text          # printed by the lesson from its parameters
    assert "top 2" in text and "top 3" not in text              # top_k=2 reached the lens table
    df = pd.read_csv(nb_path.parent / "results.csv")
    assert set(df["prompt"]) == {PROMPT} and set(df["metric"]) == {"resid_norm", "lens_p_answer"}
    assert sorted(df["layer"].unique()) == list(range(31))
    pngs = sorted(nb_path.parent.glob("*.png"))
    assert [p.name for p in pngs] == ["lens_p_answer.png", "resid_norm.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2                                     # the figures are shown in the notebook too


@pytest.fixture
def no_execution(monkeypatch):
    "Fail the test if anything reaches papermill (which would start a kernel and load a model)."
    def boom(*a, **k): raise AssertionError("papermill was called: parameters were not checked first")
    monkeypatch.setattr(papermill, "execute_notebook", boom)


def test_unknown_parameter_refused_before_running(no_execution, tmp_path):
    t = time.time()
    with pytest.raises(ValueError) as e:
        course.run_lesson(LESSON, {"promt": "x"}, out_dir=tmp_path)
    assert time.time() - t < 5
    msg = str(e.value)
    assert "'promt'" in msg and all(k in msg for k in ("model", "remote", "prompt", "top_k"))
    assert not (tmp_path / LESSON).exists()


def test_wrong_type_refused_before_running(no_execution, tmp_path):
    with pytest.raises(TypeError, match=r"top_k expects int, got 'abc'"):
        course.run_lesson(LESSON, {"top_k": "abc"}, out_dir=tmp_path)
    with pytest.raises(TypeError, match=r"remote expects bool, got 'maybe'"):
        course.run_lesson(LESSON, {"remote": "maybe"}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="out_dir is set by run_lesson"):
        course.run_lesson(LESSON, {"out_dir": "/tmp/x"}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no lesson 'nope'"):
        course.run_lesson("nope", {}, out_dir=tmp_path)


def test_parameter_coercion():
    c = course.coerce_parameter
    assert c("n", "12", 5) == 12 and c("x", "0.5", 1.0) == 0.5 and c("x", 2, 1.0) == 2.0
    assert c("r", "False", True) is False and c("r", "yes", False) is True
    assert c("l", "[1, 2]", [0]) == [1, 2] and c("l", "('a', 'b')", ["z"]) == ["a", "b"] and c("d", '{"a": 1}', {}) == {"a": 1}
    for name, value, default in (("n", "1.5", 5), ("n", True, 5), ("s", 3, "a"), ("l", "abc", [0]), ("l", '{"a": 1}', [0])):
        with pytest.raises(TypeError, match=f"{name} expects {type(default).__name__}"):
            c(name, value, default)


def test_secret_never_passed_as_parameter(no_execution, tmp_path, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "ndif-test-key-0123456789")
    with pytest.raises(ValueError, match="NDIF_API_KEY"):
        course.run_lesson(LESSON, {"prompt": "my key is ndif-test-key-0123456789"}, out_dir=tmp_path)


def test_secret_scan_finds_the_key(executed, tmp_path, monkeypatch):
    nb_path, _ = executed
    monkeypatch.setenv("NDIF_API_KEY", "ndif-test-key-0123456789")
    shutil.copytree(nb_path.parent, tmp_path / "run")
    assert course.scan_for_secrets(tmp_path / "run") == []      # a real run's outputs are clean
    (tmp_path / "run" / "results.csv").write_text("model,value\nndif-test-key-0123456789,1\n")
    assert [p.name for p in course.scan_for_secrets(tmp_path / "run")] == ["results.csv"]


def test_reproduce_skips_a_current_lesson(executed, tmp_path, no_execution):
    nb_path, _ = executed
    dest = tmp_path / LESSON
    shutil.copytree(nb_path.parent, dest)
    nb = json.loads((dest / f"{LESSON}.ipynb").read_text())
    # pretend this executed notebook ran with reproduce's parameters (the defaults): it is then current
    nb["metadata"]["papermill"]["parameters"] = {"out_dir": "."}
    (dest / f"{LESSON}.ipynb").write_text(json.dumps(nb))
    assert course.reproduce(out_dir=tmp_path, lessons=[LESSON], progress=False) == {LESSON: "skipped"}
    # another model means other parameters: it must run (and here reaches the patched papermill)
    with pytest.raises(AssertionError, match="papermill was called"):
        course.reproduce(model="gemma3-270m", out_dir=tmp_path, lessons=[LESSON], progress=False)


def test_readme_in_sync_with_index():
    assert sitebuild.build_readme(check=True) is True


def test_readme_check_fails_on_stale_copy(tmp_path):
    (tmp_path / "nbs").mkdir()
    shutil.copy(ROOT / "nbs" / "index.ipynb", tmp_path / "nbs" / "index.ipynb")
    (tmp_path / "README.md").write_text(sitebuild.readme_text(ROOT / "nbs" / "index.ipynb"))
    assert sitebuild.build_readme(check=True, root=tmp_path) is True
    nb = json.loads((tmp_path / "nbs" / "index.ipynb").read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "## A new section"})
    (tmp_path / "nbs" / "index.ipynb").write_text(json.dumps(nb))
    with pytest.raises(RuntimeError, match="README.md is out of date"):
        sitebuild.build_readme(check=True, root=tmp_path)
    assert sitebuild.build_readme(root=tmp_path) is False           # rewrites it ...
    assert "## A new section" in (tmp_path / "README.md").read_text()
    assert sitebuild.build_readme(check=True, root=tmp_path) is True  # ... and then it is current


def test_readme_text_strips_directives(tmp_path):
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# T\n> s"},
        {"cell_type": "code", "metadata": {}, "source": "#| hide\nsecret_setup()", "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": "#| export\nx = 1\nx", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": "progress"},
            {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": None}]}]}
    p = tmp_path / "nb.ipynb"; p.write_text(json.dumps(nb))
    assert sitebuild.readme_text(p) == "# T\n\n> s\n\n```python\nx = 1\nx\n```\n\n    1\n"


def test_remote_checked_before_running(no_execution, tmp_path, monkeypatch):
    "remote=True with an embedded model, or without an NDIF key, is refused before papermill starts (one line)."
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"lesson 00_first_look with remote=True .*'smollm2-135m' is an embedded model"):
        course.run_lesson(LESSON, {"remote": "true"}, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"'gemma3-270m' is an embedded model.*-p models"):
        course.validate_parameters("04_scale", {"remote": True, "models": ["meta-llama/Llama-3.1-8B", "gemma3-270m"]})
    hosted = {"remote": "true", "model": "meta-llama/Llama-3.1-8B"}
    from depthstudy.ndif import NDIFKeyError, ndif_key_present
    if not ndif_key_present():                              # (a key saved in nnsight's config would count)
        with pytest.raises(NDIFKeyError, match="needs an API key, and none is set"):
            course.run_lesson(LESSON, hosted, out_dir=tmp_path)
    assert not (tmp_path / LESSON).exists()
    assert course.validate_parameters(LESSON, {"remote": "false"}) == {"remote": False}


def test_lesson_failure_is_one_line(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise papermill.PapermillExecutionError(3, 4, "1 / 0", "ZeroDivisionError", "division\nby zero", ["Traceback ..."])
    monkeypatch.setattr(papermill, "execute_notebook", fail)
    with pytest.raises(course.LessonError) as e:
        course.run_lesson(LESSON, {}, out_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("lesson 00_first_look failed in cell 4: ZeroDivisionError: division by zero. ")
    assert msg.endswith(f"The partly executed notebook is {(tmp_path / LESSON / (LESSON + '.ipynb')).resolve()}")


def test_kernel_and_output_folder_checked_before_running(no_execution, tmp_path):
    with pytest.raises(ValueError, match="no Jupyter kernel named 'no-such-kernel'; the kernels here are: .*python3"):
        course.run_lesson(LESSON, {}, out_dir=tmp_path, kernel="no-such-kernel")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        course.run_lesson(LESSON, {}, out_dir=tmp_path / "file" / "runs")


def test_reproduce_checks_every_lesson_before_running_any(no_execution, tmp_path, monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(ValueError, match="lesson 00_first_look with remote=True"):
        course.reproduce(remote=True, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="no lesson 'nope'"):      # nothing ran (no_execution), although 00 comes first
        course.reproduce(lessons=["00", "nope"], out_dir=tmp_path, progress=False)
    assert not (tmp_path / LESSON).exists()


def test_site_folder_never_replaces_other_files(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no index.html"):
        sitebuild.render_site(tmp_path / "mine")
    monkeypatch.chdir(tmp_path / "mine")
    for bad in (".", ".."):
        with pytest.raises(ValueError, match="working directory or a folder above it"):
            sitebuild.check_site_folder(bad)
    (tmp_path / "old_site").mkdir(); (tmp_path / "old_site" / "index.html").write_text("<html>")
    assert sitebuild.check_site_folder(tmp_path / "old_site") == (tmp_path / "old_site").resolve()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
