"""A hostile user's cases (issue 28) through the real `depthstudy` command: nothing the user owns is deleted or
overwritten, the NDIF key never lands in an output in any of its forms, and `doctor` reports only what it measured.
Each test names the finding it guards."""
import hashlib, http.server, json, os, shutil, subprocess, sys, threading
from pathlib import Path
import pytest

EXE = str(Path(sys.executable).parent / "depthstudy") if (Path(sys.executable).parent / "depthstudy").exists() \
    else shutil.which("depthstudy")


def run(*argv, env=None, cwd=None, timeout=600):
    e = dict(os.environ)
    e.pop("DEPTHSTUDY_DEBUG", None)
    for k, v in (env or {}).items():
        if v is None: e.pop(k, None)
        else: e[k] = str(v)
    return subprocess.run([EXE, *map(str, argv)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def digest(folder: Path) -> dict:
    "{relative path: sha256} of every file under `folder`: equal digests mean nothing was deleted, added or changed."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(r, pattern=""):
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert pattern in lines[0], lines[0]
    return lines[0]


# Finding 1: `cache clear` removed the whole folder named by DEPTHSTUDY_ACTS
def test_cache_clear_never_deletes_a_users_files(tmp_path):
    mine = tmp_path / "my-big-disk"
    (mine / "thesis").mkdir(parents=True)
    (mine / "thesis" / "chapter1.tex").write_text("\\section{Results}\n")
    (mine / "ab").mkdir(); (mine / "ab" / "notes.safetensors").write_bytes(b"not an entry of ours")
    before = digest(mine)
    r = run("cache", "clear", env={"DEPTHSTUDY_ACTS": mine, "DEPTHSTUDY_CACHE": tmp_path / "cache"})
    one_error_line(r, "refusing to clear")
    assert "nothing was deleted" in r.stderr and digest(mine) == before


def test_cache_clear_deletes_its_own_entries_and_only_them(tmp_path):
    acts, cache = tmp_path / "acts", tmp_path / "cache"
    env = {"DEPTHSTUDY_ACTS": acts, "DEPTHSTUDY_CACHE": cache}
    r = run("trace", "--model", "smollm2-135m", "--prompt", "The capital of France is", env=env)
    assert r.returncode == 0, r.stderr
    entries = list(acts.glob("*/*.safetensors"))
    assert entries and (acts / ".depthstudy-activations").is_file()
    (acts / "README.txt").write_text("a user's note, added later")          # now the folder holds a foreign file
    before = digest(acts)
    one_error_line(run("cache", "clear", env=env), "did not make")
    assert digest(acts) == before
    (acts / "README.txt").unlink()
    r = run("cache", "clear", env=env)
    assert r.returncode == 0 and f"removed {len(entries)} cached activation entries" in r.stdout, r.stdout + r.stderr
    assert acts.is_dir() and [p.name for p in acts.iterdir()] == [".depthstudy-activations"]
    assert (cache / "models" / "smollm2-135m").is_dir()                      # the prepared model is kept
    info = run("cache", "info", env=env)
    assert "activations: 0 entries" in info.stdout and "embedded models cached: smollm2-135m" in info.stdout


# Finding 3: --out equal to --data overwrote the data set
@pytest.mark.parametrize("argv", [
    ["depth", "--analysis", "lens", "--n", "1", "--data", "{data}", "--out", "{data}"],
    ["mc", "--task", "generic:{data}", "--out", "{data}"],
    ["mc", "--task", "generic:{data}", "--out", "{link}"],                  # the same file under another name
], ids=["depth_data", "generic_task", "symlink"])
def test_out_never_overwrites_an_input(tmp_path, argv):
    data = tmp_path / "f" / "v.csv"
    data.parent.mkdir()
    data.write_text('{"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0}\n')
    (tmp_path / "link.csv").symlink_to(data)
    before = data.read_bytes()
    r = run(*[a.format(data=data, link=tmp_path / "link.csv") for a in argv], env={"DEPTHSTUDY_CACHE": tmp_path / "c"})
    one_error_line(r, "which this command reads")
    assert data.read_bytes() == before and not (tmp_path / "c" / "models").exists()


# Finding 4: doctor said "NDIF: reachable" with no network
class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"deployments": {"x": {"repo_id": "meta-llama/Llama-3.1-70B", "application_state": "RUNNING",
                                                 "deployment_level": "HOT"}}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass


def test_doctor_says_reachable_only_after_a_real_answer(tmp_path):
    env = {"DEPTHSTUDY_CACHE": tmp_path / "c"}
    r = run("doctor", env={**env, "NDIF_HOST": "http://127.0.0.1:9"})      # nothing listens there
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("NDIF:"))
    assert "could not reach it" in line and "reachable;" not in line and "did not answer" in line, line
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)  # a stand-in NDIF on this machine's loopback
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = run("doctor", env={**env, "NDIF_HOST": f"http://127.0.0.1:{server.server_address[1]}"})
    finally:
        server.shutdown()
    line = next(l for l in r.stdout.splitlines() if l.startswith("NDIF:"))
    assert line.startswith("NDIF: reachable; presets hosted now:") and "meta-llama/Llama-3.1-70B yes" in line, line


# Issue 24: the answer text alone is a control asked for by its own option, and its rows say so
def test_answer_only_control_runs_and_is_labelled(tmp_path):
    import pandas as pd
    r = run("mc", "--task", "facts", "--n", "8", "--mode", "probe", "--answer-only", "--out", tmp_path / "ao.csv")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "ao.csv")
    assert set(df["question"]) == {False} and "mc1_probe" in set(df["metric"])
    r = run("mc", "--task", "facts", "--n", "8", "--mode", "probe", "--out", tmp_path / "full.csv")
    assert r.returncode == 0 and set(pd.read_csv(tmp_path / "full.csv")["question"]) == {True}


# Found by the hostile review of the fixes: an input found through DEPTHSTUDY_DATA, not named on the command line
def test_out_never_overwrites_a_data_set_found_through_the_environment(tmp_path):
    from depthstudy.tasks import sample_data
    data = sample_data(tmp_path / "data")
    target = next(data.rglob("TruthfulQA.csv"))
    before = digest(data)
    r = run("mc", "--task", "truthfulqa-mc1", "--n", "2", "--out", target, env={"DEPTHSTUDY_DATA": data})
    one_error_line(r, "is not a depthstudy results table")
    assert digest(data) == before


def test_run_never_writes_over_a_lesson_source(tmp_path):
    from depthstudy.course import find_lesson
    src = find_lesson("00_first_look")
    before = src.read_bytes()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "00_first_look").symlink_to(src.parent)          # the output folder IS the lessons' folder
    one_error_line(run("run", "00", "--out", tmp_path / "o"), "refusing to write lesson 00_first_look")
    assert src.read_bytes() == before


def test_python_api_refuses_an_empty_template_as_the_cli_does():
    from depthstudy.tasks import load_task, item_template
    it = load_task("facts", n=1)[0]
    for t in ("", "   ", "Answer:"):
        with pytest.raises(ValueError, match=r"a template must contain \{question\}"): item_template(it, t)
    assert item_template(it, "Q: {question}\nA:").prompt(it).startswith("Q: ")
    with pytest.raises(TypeError, match="must be a depthstudy Template"): item_template(it, 3)


def test_run_with_a_relative_model_path_and_no_machine_path_in_the_run(tmp_path):
    "A relative -p model is rewritten for the kernel (which runs in the output folder); the executed notebook then shows "
    "neither the run folder nor the virtual environment."
    from depthstudy.models import prepare_embedded
    (tmp_path / "mymodel").symlink_to(prepare_embedded("smollm2-135m", progress=False))
    r = run("run", "00", "-p", "model", "./mymodel", "-p", "top_k", "2", "--out", "runs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    nb = (tmp_path / "runs" / "00_first_look" / "00_first_look.ipynb").read_text()
    assert "../../mymodel" in nb                                         # relative to the kernel's folder
    for p in (str(tmp_path.resolve()), str(tmp_path), sys.prefix):
        assert p not in nb, p
