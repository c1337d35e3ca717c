"The depthstudy command line, run as a real subprocess."
import subprocess, sys, os
import numpy as np
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
    from depthstudy.store import ActivationCache
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
    df = load_results(out)
    assert {"mc1_probe", "shuffled", "control_train", "control_test", "selectivity"} <= set(df.metric)
    wide = df.pivot_table(index=["layer"], columns="metric", values="value")
    np.testing.assert_allclose(wide.selectivity, wide.mc1_probe - wide.control_test, atol=1e-9)


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


def test_every_option_has_help_and_model_commands_allow_pickle():
    import argparse
    from depthstudy.cli import build_parser, MODEL_COMMANDS
    p = build_parser()
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, s in p.commands.items() for a in s._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []
    for name in MODEL_COMMANDS:
        assert any("--allow-pickle" in a.option_strings for a in p.commands[name]._actions), name


def test_bugs_keep_their_traceback(monkeypatch):
    "Only a user's mistakes become one line; a bug (here a RuntimeError, a bare KeyError) propagates with its traceback."
    from depthstudy import cli
    for exc in (RuntimeError("a bug"), KeyError("a bug")):
        def boom(args, exc=exc): raise exc
        monkeypatch.setattr(cli, "cmd_lessons", boom)
        with pytest.raises(type(exc)):
            cli.main(["lessons"])


def test_debug_shows_the_traceback_of_a_user_error():
    r = run("mc", "--task", "no-such-task", env=dict(os.environ, DEPTHSTUDY_DEBUG="1"))
    assert r.returncode == 1 and "Traceback" in r.stderr and "unknown task 'no-such-task'" in r.stderr


def test_main_in_process_returns_the_status(capsys):
    from depthstudy.cli import main
    assert main(["mc", "--task", "facts", "--n", "0"]) == 2
    assert main(["--help"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["depthstudy mc: error: argument --n: must be at least 1, got 0 (leave the option out for its default)  "
                   "(see depthstudy mc --help)"]
