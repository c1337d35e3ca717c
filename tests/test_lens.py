"Logit-lens MC scoring (study 1): the fast path against a plain one-forward-per-candidate reference."
import numpy as np
import pytest
import torch
from depthstudy.mc import tokenize_mc, mc_scores, mc_scores_reference, mc_metrics, lens_mc
from depthstudy.models import tiny_model
from depthstudy.items import MCItem, Template
from depthstudy.tasks import calculation, factual, load_task


def mc1(scores, items):
    "Per item and layer: does the first correct choice beat every false one (strictly)?"
    out = []
    for S, it in zip(scores, items):
        S = np.asarray(S, dtype=np.float64)
        false = [j for j in range(len(it.choices)) if j not in it.correct]
        out.append(S[it.correct[0]] > S[false].max(0))
    return np.stack(out)


Q_A = Template()   # "Q: {question}\nA:" without a few-shot header: the reference is slow, its cost grows with length


@pytest.fixture(scope="module")
def items20():
    "20 items of two real tasks: the built-in facts (one-token and multi-token answers) and calculation."
    items = factual(n=12, seed=3, n_distractors=2) + calculation(n=8, seed=3, n_distractors=2)
    assert len(items) >= 20
    return items


@pytest.fixture(scope="module")
def embedded64():
    "The embedded model in float64: un-normed layers' scores run into the hundreds, where float32 cannot resolve 1e-4."
    from depthstudy.models import load_model
    return load_model("smollm2-135m", dtype=torch.float64)


@pytest.fixture(scope="module")
def ref(embedded64, items20):
    "The plain reference, faithful on all 20 items, normed at every layer on 6 (it is slow, so computed once)."
    m = embedded64
    return {True: mc_scores_reference(m.hf, m.tokenizer, items20, Q_A, faithful=True),
            False: mc_scores_reference(m.hf, m.tokenizer, items20[:6], Q_A, faithful=False)}


def test_faithful_matches_reference_on_real_items(embedded64, embedded, items20, ref):
    ref = ref[True]
    fast = mc_scores(embedded64, items20, Q_A, faithful=True, cache=False, progress=False)
    assert len(fast) == len(ref) == len(items20)
    for f, r, it in zip(fast, ref, items20):
        assert f.shape == r.shape == (len(it.choices), embedded64.n_layers + 1)
        torch.testing.assert_close(f, r, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mc1(fast, items20), mc1(ref, items20))
    # the model as it is used (float32): batching and padding change the hidden states' rounding (~1e-7 relative),
    # which un-normed deep layers turn into a few 1e-4 absolute; MC1 stays identical
    fast = mc_scores(embedded, items20, Q_A, faithful=True, cache=False, progress=False)
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(mc1(fast, items20), mc1(ref, items20))


def test_default_differs_from_reference_only_by_the_final_norm(embedded64, items20, ref):
    fast = mc_scores(embedded64, items20[:6], Q_A, cache=False, progress=False)      # final_norm=True, the default
    normed_ref, raw_ref = ref[False], ref[True][:6]
    for f, n, r in zip(fast, normed_ref, raw_ref):
        torch.testing.assert_close(f, n, atol=1e-4, rtol=0)
        # the last layer is normed in both; earlier layers are not the same numbers without the norm
        torch.testing.assert_close(f[:, -1], r[:, -1], atol=1e-4, rtol=0)
    assert max(float((f[:, :-1] - r[:, :-1]).abs().max()) for f, r in zip(fast, raw_ref)) > 1.0


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", n_layers=3)


def tiny_items():
    return [MCItem("the cat sat on", ["the mat", "the dog", "red"], [0], "toy"),
            MCItem("what is the capital of france", ["paris", "rome", "the dog"], [0], "toy"),
            MCItem("one plus one is", ["two", "three", "four", "the mat"], [0, 1], "toy")]


def test_batching_and_length_norm_do_not_change_scores(tiny):
    items = tiny_items()
    a = mc_scores(tiny, items, Template(), cache=False, progress=False)
    b = mc_scores(tiny, items, Template(), batch_size=1, cache=False, progress=False)   # one item per pass
    ref = mc_scores_reference(tiny.hf, tiny.tokenizer, items, Template(), faithful=False)
    for x, y, r in zip(a, b, ref):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        torch.testing.assert_close(x, r.float(), atol=1e-5, rtol=0)
    # the mean over answer tokens: sum divided by the number of answer tokens of each choice
    m = mc_scores(tiny, items, Template(), length_norm=True, cache=False, progress=False)
    td = tokenize_mc(tiny.tokenizer, items, Template())
    for x, s, d in zip(m, a, td):
        n_tok = torch.tensor([len(f) - len(d["prompt"]) for f in d["fulls"]], dtype=torch.float32)
        torch.testing.assert_close(x, s / n_tok[:, None], atol=1e-5, rtol=0)
    assert any(len(f) - len(d["prompt"]) > 1 for d in td for f in d["fulls"])   # the test covers multi-token answers


def test_remote_local_gives_the_same_numbers(embedded, items20):
    items = items20[:4]
    local = mc_scores(embedded, items, faithful=True, cache=False, progress=False)
    sim = mc_scores(embedded, items, faithful=True, remote="local", cache=False, progress=False)
    for x, y in zip(local, sim):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)


def test_lens_mc_table_on_the_embedded_model(embedded):
    items = load_task("facts", n=16, seed=1)
    df = lens_mc(embedded, items, n_boot=200, progress=False)
    L = embedded.n_layers
    assert set(df.metric) == {"mc1", "mc2", "mc3"} and set(df.layer) == set(range(L + 1))
    assert (df.model == embedded.name).all() and (df.n_layers == L).all() and (df.n == 16).all()
    assert df.lens.eq("final_norm").all()
    m1 = df.query("metric == 'mc1'").set_index("layer")
    assert ((m1.ci_low <= m1.value + 1e-12) & (m1.value <= m1.ci_high + 1e-12)).all()
    np.testing.assert_allclose(m1.rel_depth, m1.index / L)
    # the real model knows capitals and currencies at its last layer far above chance; its embeddings do not
    assert m1.value[L] > m1.chance[L] + 0.2 and m1.value[L] > m1.value[0]


def test_mc_metrics_against_hand_computation():
    items = [MCItem("q", ["a", "b", "c"], [0], "t"), MCItem("q2", ["a", "b", "c", "d"], [1, 3], "t")]
    S = [np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]), np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 1.0], [2.0, 2.0]])]
    df = mc_metrics(S, items, model="toy", n_boot=100).set_index(["layer", "metric"])
    assert df.value[(0, "mc1")] == 1.0 and df.value[(1, "mc1")] == 0.0      # layer 1: b beats a; c beats b
    assert df.value[(0, "mc3")] == 1.0 and df.value[(1, "mc3")] == 0.25     # layer 1: item 1's d beats c, b does not
    mc2_item1_l0 = (np.exp(3) + np.exp(2)) / (np.exp(0) + np.exp(3) + np.exp(1) + np.exp(2))
    mc2_item0_l0 = np.exp(1) / (np.exp(1) + np.exp(0) + np.exp(0.5))
    assert df.value[(0, "mc2")] == pytest.approx((mc2_item0_l0 + mc2_item1_l0) / 2)
    assert df.chance[(0, "mc1")] == pytest.approx((1 / 3 + 1 / 3) / 2)    # 2 false + 1 true each
    assert df.chance[(0, "mc2")] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_bad_input_is_refused_clearly(tiny):
    with pytest.raises(ValueError, match="at least one item"): mc_scores(tiny, [], cache=False, progress=False)
    with pytest.raises(ValueError, match="batch_size"): mc_scores(tiny, tiny_items(), batch_size=0, cache=False, progress=False)
    one = MCItem("the cat sat on", ["the mat", ""], [0], "toy")
    with pytest.raises(ValueError, match="adds no token"): tokenize_mc(tiny.tokenizer, [one], Template(fmt="{question}", choice_fmt="{choice}"))
    with pytest.raises(ValueError, match="items"): mc_metrics([np.zeros((3, 4))], tiny_items())


def _cache_with_models(root, embedded):
    "A fresh cache folder (empty activation store) that reuses the prepared embedded model through a link."
    from depthstudy.models import embedded_path
    (root / "models").mkdir(parents=True)
    (root / "models" / "smollm2-135m").symlink_to(embedded_path("smollm2-135m"))
    return root


@pytest.mark.slow
def test_interrupted_lens_run_resumes_with_only_the_missing_items(embedded, tmp_path):
    """SIGINT to a real `depthstudy mc --mode lens` process: it stops with status 130 and keeps every finished batch;
    the re-run computes only the missing items (the kept entries are not rewritten) and writes the same CSV as an
    uninterrupted run."""
    import os, signal, subprocess, sys, time
    import pandas as pd
    exe = [sys.executable, "-c", "import sys; from depthstudy.cli import main; sys.exit(main())"]
    argv = ["mc", "--task", "facts", "--n", "40", "--mode", "lens"]
    env = lambda root: dict(os.environ, DEPTHSTUDY_CACHE=str(_cache_with_models(root, embedded)),
                            DEPTHSTUDY_ACTS=str(root / "acts"), PYTHONUNBUFFERED="1")
    acts = tmp_path / "a" / "acts"
    entries = lambda: {p.name: p.stat().st_ino for p in acts.glob("*/*.safetensors")} if acts.exists() else {}
    e1 = env(tmp_path / "a")
    # Ctrl-C's default action in the child, even when this test runs in a background job (where the shell starts
    # processes with SIGINT ignored, and Python then never raises KeyboardInterrupt)
    p = subprocess.Popen(exe + argv + ["--out", str(tmp_path / "resumed.csv")], env=e1, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t = time.time()
    while len(entries()) < 8 and p.poll() is None and time.time() - t < 600: time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted: give it more items"
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    kept = entries()
    assert 8 <= len(kept) < 40 and not (tmp_path / "resumed.csv").exists()
    assert not list(acts.rglob("*.tmp")), "an interrupted write left a temporary file"
    r = subprocess.run(exe + argv + ["--out", str(tmp_path / "resumed.csv")], env=e1, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    after = entries()
    assert len(after) == 40
    assert {k: after[k] for k in kept} == kept, "entries computed before the interruption were computed again"
    r = subprocess.run(exe + argv + ["--out", str(tmp_path / "straight.csv")], env=env(tmp_path / "b"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = pd.read_csv(tmp_path / "resumed.csv"), pd.read_csv(tmp_path / "straight.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)
