"The depthstudy command line, run as a real subprocess."
import subprocess, sys, os
import pytest


from pathlib import Path
EXE = str(Path(sys.executable).parent / "depthstudy")  # the installed console script


def run(*args, timeout=300, env=None):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_trace_names_paris(embedded):
    r = run("trace", "--model", "smollm2-135m", "--prompt", "The capital of France is")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "next token: ' Paris'"
    layer_rows = [l for l in lines if l.strip() and l.split()[0].isdigit()]
    assert len(layer_rows) == 31  # h[0] .. h[30]


def test_models_lists_embedded_first(embedded):
    r = run("models")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("smollm2-135m") and "cached" in first


def test_unknown_model_is_a_clear_error_not_a_traceback():
    r = run("trace", "--model", "no/such-model", "--prompt", "hi")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "depthstudy models" in r.stderr


def test_cache_info_and_clear(tmp_path):
    env = dict(os.environ, DEPTHSTUDY_CACHE=str(tmp_path))
    from depthstudy.cache import ActivationCache
    import torch
    c = ActivationCache(tmp_path / "acts"); c.put(c.key("x"), {"t": torch.ones(3)})
    r = run("cache", "info", env=env)
    assert "1 entries" in r.stdout, r.stdout + r.stderr
    r = run("cache", "clear", env=env)
    assert "removed 1" in r.stdout and c.info()["entries"] == 0


def test_doctor_reports_without_revealing_key():
    env = dict(os.environ, NDIF_API_KEY="MARKER-SECRET-987")
    r = run("doctor", "--offline", env=env)
    assert r.returncode == 0, r.stderr
    assert "NDIF API key: set" in r.stdout and "torch" in r.stdout and "MARKER-SECRET" not in r.stdout + r.stderr


def test_depth_contrib_writes_the_tidy_table(embedded, tmp_path, data_dir):
    out = tmp_path / "r.csv"
    r = run("depth", "--model", "smollm2-135m", "--analysis", "contrib", "--n", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from depthstudy.results import load_results
    df = load_results(out)
    assert set(df.layer) == set(range(30)) and {"attn_rel", "mlp_rel"} <= set(df.metric)


def test_mc_lens_and_probe_write_the_tidy_table(embedded, tmp_path):
    from depthstudy.results import load_results, COLUMNS
    out = tmp_path / "lens.csv"
    r = run("mc", "--task", "facts", "--n", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = load_results(out)
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS and set(df.metric) == {"mc1", "mc2", "mc3"}
    assert set(df.layer) == set(range(31)) and (df.n == 8).all() and df.lens.eq("final_norm").all()
    out = tmp_path / "faithful.csv"
    assert run("mc", "--task", "facts", "--n", "8", "--faithful", "--out", str(out)).returncode == 0
    assert load_results(out).lens.eq("faithful").all()
    out = tmp_path / "probe.csv"
    r = run("mc", "--task", "facts", "--n", "10", "--mode", "probe", "--template", "Fact: {question}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert {"mc1_probe", "control", "selectivity"} <= set(load_results(out).metric)


def test_mc_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"question": "2+2?", "choices": ["4", "5"], "answer": 0}\n{"question": "no choices"}\n')
    r = run("mc", "--task", f"generic:{bad}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "items.jsonl" in r.stderr and "2" in r.stderr
    r = run("mc", "--task", "truthfulqa-mc1", "--data", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and "missing.csv" in r.stderr and "Traceback" not in r.stderr
    r = run("mc", "--task", "facts", "--template", "no placeholder")
    assert r.returncode == 2 and "{question}" in r.stderr
    r = run("mc", "--task", "facts", "--mode", "probe", "--faithful")
    assert r.returncode == 2 and "logit-lens option" in r.stderr
