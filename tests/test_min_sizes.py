"""Issue 28, findings 5 and 8: intervals stay within the range of their statistic, and results from too little data
say that they cannot be read (the `caveat` column, printed by the command line as one warning line each).

The command-line tests run the real console script; most use a tiny random-init model saved to a folder (any text
works with its byte tokenizer), two the embedded SmolLM2-135M on the very cases the issue reports."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from depthstudy.results import MIN_SIZE, caveat, metric_range, load_results

EXE = str(Path(sys.executable).parent / "depthstudy")          # the installed console script
NO_CONTAINMENT = {"flip_rate_mean"}   # alternation's summary row: its ci is the null's band, not an interval of its value


def run(*args, env=None, timeout=300):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def warnings_of(r, cmd):
    "The caveat lines the command printed on stderr."
    tag = f"depthstudy {cmd}: warning: "
    return [l[len(tag):] for l in r.stderr.splitlines() if l.startswith(tag)]


def check_intervals(df, what=""):
    """Every row: value and interval within the range of its metric (`metric_range`), and ci_low <= value <= ci_high
    where the interval exists; the same for the `gain` columns of a decoding table (the range of a difference)."""
    assert len(df) and "caveat" in df.columns, what
    get = lambda r, c: getattr(r, c) if c in df.columns else None
    eps, bad = 1e-9, []
    for r in df.itertuples():
        src = get(r, "source_metric") if isinstance(get(r, "source_metric"), str) else None
        checks = [(metric_range(r.metric, src, get(r, "source_chance")), r.value, r.ci_low, r.ci_high,
                   r.metric not in NO_CONTAINMENT)]
        if "gain" in df.columns and r.metric != "skill":
            checks.append((metric_range("gain", r.metric), r.gain, r.gain_low, r.gain_high, True))
        for (lo_b, hi_b), v, lo, hi, contain in checks:
            v, lo, hi = float(v), float(lo), float(hi)
            ok = np.isnan(v) or lo_b - eps <= v <= hi_b + eps
            if not (np.isnan(lo) or np.isnan(hi)):
                ok = ok and lo_b - eps <= lo and hi <= hi_b + eps and (not contain or np.isnan(v) or lo - eps <= v <= hi + eps)
            if not ok: bad.append((r.task, r.layer, r.metric, v, lo, hi, (lo_b, hi_b)))
    assert not bad, f"{what}: {len(bad)} values or intervals outside their range, e.g. {bad[:5]}"


# ---------------------------------------------------------------- MIN_SIZE and the caveat words

def test_min_sizes_are_declared_once_with_a_reason():
    for name, m in MIN_SIZE.items():
        assert m["n"] >= 1 and m["unit"] and m["needs"] and len(m["why"]) > 40, name
        assert caveat(name, m["n"]) == "" and caveat(name, m["n"] - 0.5).endswith("this result cannot be read")
    assert MIN_SIZE["probe_mc"]["n"] == 6                      # the number the lessons state


# ---------------------------------------------------------------- property: intervals within range, every analysis

def test_fold_intervals_stay_within_range_on_random_data():
    "decode_layers and mc_probe on pure noise with few stimuli (where t-intervals over folds are widest), many seeds."
    from depthstudy.probes import decode_layers, mc_probe
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for n in (8, 12, 30):
            X = rng.standard_normal((n, 3, 16)).astype(np.float32)
            for y, kind in ((rng.integers(0, 2, n), "svm"), (rng.integers(0, 3, n), "ridge"), (rng.standard_normal(n), "ridge")):
                df = decode_layers(X, y, kind=kind, n_perm=3, seed=seed, ref_layer=0, control=True)
                check_intervals(df, f"decode_layers n={n} seed={seed} {kind}")
                assert (df.caveat != "").all() if n < MIN_SIZE["decode"]["n"] else True
        acts = [rng.standard_normal((4, 3, 16)) for _ in range(7)]
        check_intervals(mc_probe(acts[:4], [[0]] * 4, keys=[list("abcd")] * 4, seed=seed), "mc_probe 4 items")
        check_intervals(mc_probe(acts, [[int(k)] for k in rng.integers(0, 4, 7)], keys=[list("abcd")] * 7, seed=seed), "mc_probe 7")


def test_every_analysis_keeps_its_intervals_in_range(tiny_llama):
    "Each analysis of the library on a tiny random-init model, with the sizes a hurried user picks."
    from depthstudy.tasks import factual
    from depthstudy.mc import lens_mc
    from depthstudy.probes import probe_mc
    from depthstudy.hierarchy import hierarchy, skill, level_curves, embedding_gain, alternation
    from depthstudy.residual import contributions
    from depthstudy.lens import logit_lens_depth
    from depthstudy.maps import linear_maps
    from depthstudy.skip import skip_effects
    m = tiny_llama(n_layers=4, hidden=32)
    items = factual(n=7)
    check_intervals(lens_mc(m, items, progress=False, n_boot=200), "lens_mc")
    check_intervals(probe_mc(m, items, progress=False, cache=False), "probe_mc")
    h = pd.concat([hierarchy(m, lv, n=n, n_perm=3, progress=False, cache=False, kind=k)
                   for lv, n, k in (("items", 10, "svm"), ("relations", 12, "ridge"), ("documents", 10, "svm"))])
    for name, df in (("hierarchy", h), ("skill", skill(h)), ("level_curves", level_curves(h)),
                     ("embedding_gain", embedding_gain(h)), ("alternation", alternation(skill(h), n_shuffle=50))):
        check_intervals(df, name)
    texts = ["Ana has 3 apples and buys 4 more.", "Ben reads 5 pages a day for 6 days.", "It rains; the street is wet."]
    check_intervals(contributions(m, texts, progress=False, cache=False, n_boot=200), "contributions")
    check_intervals(logit_lens_depth(m, texts, progress=False, cache=False, n_boot=200), "logit_lens_depth")
    check_intervals(skip_effects(m, texts, n_t=1, progress=False, cache=False, n_boot=200), "skip_effects")
    b = tiny_llama(n_layers=3, hidden=32, seed=1, name="tiny-b")
    check_intervals(linear_maps(m, b, texts * 3, progress=False, cache=False, n_boot=200), "linear_maps")


# ---------------------------------------------------------------- the real command line

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    "Two tiny random-init Llamas saved as model folders (byte tokenizer, 2048 positions): 'a' and a different 'b'."
    from depthstudy.models import tiny_model, tiny_tokenizer
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        tok = tiny_tokenizer("bytes")
        m = tiny_model("llama", n_layers=3, d=32, seed=seed, tokenizer=tok, max_positions=2048)
        m.hf.save_pretrained(root / name); tok.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def one_text(tmp_path_factory, data_dir):
    "A data folder whose GSM8K test set holds one problem."
    d = tmp_path_factory.mktemp("data")
    (d / "gsm8k").mkdir()
    first = (data_dir / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0]
    (d / "gsm8k" / "test.jsonl").write_text(first + "\n", encoding="utf-8")
    return d


@pytest.mark.needs_data
def test_hierarchy_items_intervals_in_range_without_numpy_warning(embedded, tmp_path):
    "Finding 5: `hierarchy --level items --n 10` gave 73 accuracy intervals such as -0.14..0.54 and numpy's warning."
    out = tmp_path / "items.csv"
    r = run("hierarchy", "--level", "items", "--n", "10", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Mean of empty slice" not in r.stderr and "RuntimeWarning" not in r.stderr, r.stderr
    df = load_results(out)
    check_intervals(df, "hierarchy items --n 10")
    acc = df[df.metric.isin(["accuracy", "auc"])].dropna(subset=["ci_low"])
    assert len(acc) > 100 and acc.ci_low.min() >= 0 and acc.ci_high.max() <= 1
    assert df.query("metric == 'r2'").ci_high.max() <= 1
    # 10 stimuli are enough for a binary label, not for 'category', some of whose classes have one stimulus
    assert (df.query("task == 'edible'").caveat == "").all()
    cat = set(df.query("task == 'category'").caveat)
    assert len(cat) == 1 and "of label 'category'" in cat.pop()
    assert any("of label 'category'" in w for w in warnings_of(r, "hierarchy"))


def test_hierarchy_documents_svm_intervals_in_range(model_dirs, tmp_path):
    "Finding 5: `--level documents --classifier svm` gave an upper bound of 1.255."
    out = tmp_path / "docs.csv"
    r = run("hierarchy", "--model", model_dirs["a"], "--level", "documents", "--n", "10", "--classifier", "svm",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Mean of empty slice" not in r.stderr and "RuntimeWarning" not in r.stderr, r.stderr
    df = load_results(out)
    check_intervals(df, "hierarchy documents svm")
    assert df.dropna(subset=["ci_high"]).query("metric in ['accuracy', 'auc']").ci_high.max() <= 1


def test_analogies_from_three_stimuli_say_they_cannot_be_read(model_dirs, tmp_path):
    "Finding 8: `hierarchy --level analogies --n 3` reported 0.0 [0, 0] and nothing else."
    out = tmp_path / "ana.csv"
    r = run("hierarchy", "--model", model_dirs["a"], "--level", "analogies", "--n", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = load_results(out)
    want = "too few stimuli: 3, a per-layer decoder needs at least 10; this result cannot be read"
    assert (df.caveat == want).all()
    assert warnings_of(r, "hierarchy") == [want]              # said once, not once per row


@pytest.mark.needs_data
def test_probe_on_two_items_says_it_cannot_be_read(embedded, tmp_path):
    "Finding 8: `mc --task facts --n 2 --mode probe` printed a full probe and selectivity table from 2 items."
    out = tmp_path / "probe.csv"
    r = run("mc", "--task", "facts", "--n", "2", "--mode", "probe", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = load_results(out)
    want = "too few items in task 'facts': 2, a probe needs at least 6; this result cannot be read"
    assert {"mc1_probe", "selectivity"} <= set(df.metric) and (df.caveat == want).all()
    assert warnings_of(r, "mc") == [want]
    check_intervals(df, "mc probe n=2")


def test_probe_on_six_items_has_no_caveat(model_dirs, tmp_path):
    out = tmp_path / "probe6.csv"
    r = run("mc", "--model", model_dirs["a"], "--task", "facts", "--n", "6", "--mode", "probe", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (load_results(out).caveat == "").all() and warnings_of(r, "mc") == []


def test_lens_over_depth_on_a_one_text_file_says_so(model_dirs, one_text, tmp_path):
    "Finding 8: `depth --analysis lens --n 50` on a one-text file used 1 text silently."
    out = tmp_path / "lens.csv"
    r = run("depth", "--model", model_dirs["a"], "--analysis", "lens", "--n", "50", "--out", str(out),
            env=dict(DEPTHSTUDY_DATA=str(one_text)))
    assert r.returncode == 0, r.stderr
    assert "texts: GSM8K test set (DEPTHSTUDY_DATA): 1 text (asked for 50)" in r.stderr, r.stderr
    want = "too few texts: 1, a bootstrap interval over texts needs at least 5; this result cannot be read"
    assert (load_results(out).caveat == want).all() and warnings_of(r, "depth") == [want]
    out2 = tmp_path / "lens2.csv"                             # the same file named by --data
    r = run("depth", "--model", model_dirs["a"], "--analysis", "lens", "--n", "50", "--out", str(out2),
            "--data", str(one_text / "gsm8k" / "test.jsonl"))
    assert r.returncode == 0, r.stderr
    assert (load_results(out2).caveat == want).all() and warnings_of(r, "depth") == [want]
    assert "texts: GSM8K test set (--data): 1 text (asked for 50)" in r.stderr, r.stderr   # --data says it too


def test_skip_effects_on_one_text_say_so(model_dirs, one_text, tmp_path):
    "The skip analysis carries the same caveat as the other analyses over texts."
    out = tmp_path / "skip.csv"
    r = run("depth", "--model", model_dirs["a"], "--analysis", "skip", "--n", "50", "--out", str(out),
            "--data", str(one_text / "gsm8k" / "test.jsonl"))
    assert r.returncode == 0, r.stderr
    want = "too few texts: 1, a bootstrap interval over texts needs at least 5; this result cannot be read"
    assert (load_results(out).caveat == want).all() and warnings_of(r, "depth") == [want]


@pytest.mark.needs_data
def test_map_of_a_model_onto_itself_says_so(model_dirs, tmp_path):
    "Finding 8: `map` of a model onto itself gave no warning; another model gives none, a determined map is exact."
    out = tmp_path / "self.csv"
    r = run("map", "--source", model_dirs["a"], "--target", model_dirs["a"], "--n", "20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = load_results(out)
    assert df.caveat.str.startswith("source and target are the same model").all()
    assert len(warnings_of(r, "map")) == 1
    ident = df.query("metric == 'r2' and layer == layer_b")
    assert (ident.value > 0.999).all()                        # enough training tokens: each layer maps onto itself
    out = tmp_path / "other.csv"
    r = run("map", "--source", model_dirs["a"], "--target", model_dirs["b"], "--n", "20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = load_results(out)
    assert (df.caveat == "").all() and warnings_of(r, "map") == []
    check_intervals(df, "map a -> b")
