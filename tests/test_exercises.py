"""Tests for depthstudy.exercises: every check passes the worked solution (and another correct way of writing it), and fails
typical wrong answers (written out below) with a message that names the mistake. The views of single items agree with the
library's analyses. On the real embedded model (SmolLM2-135M)."""
import matplotlib
matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
import torch
import nnsight
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from depthstudy.exercises import (ExerciseError, solutions, EXERCISES, solution_source, check_logit_lens, check_mc_score,
                                  check_skip_effect, check_depth_score, check_item_folds, check_probe_curve, fold_groups,
                                  planted_probe, SKIP_TEXT)
from depthstudy.views import choice_scores, skip_tokens, stimulus_decoding
from depthstudy.mc import mc_scores
from depthstudy.probes import item_folds
from depthstudy.skip import skip_raw, draw_ts
from depthstudy.stimuli import stimuli
from depthstudy.tasks import factual


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    "One torch thread: these tests run many small passes, which extra threads slow down on a busy 2-core machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fails(check, fn, *mistakes, **kw):
    "Run `check(fn)`; it must raise ExerciseError whose message names every one of `mistakes`. Returns the message."
    with pytest.raises(ExerciseError) as e:
        check(fn, **kw)
    msg = str(e.value)
    for name in mistakes: assert f"Mistake: {name}" in msg, msg
    assert "Hint:" in msg
    return msg


def _states(m, inputs, outputs=False):
    "h[0..L] (or the block outputs and the final norm's output) at every position: a list of L+1 tensors [n, T, d]."
    with torch.no_grad(), m.lm.trace(inputs):
        hs = nnsight.save([])
        for l in range(m.n_layers): hs.append(m.blocks[l].output if outputs else m.blocks[l].input)
        hs.append(m.norm.output if outputs else m.norm.input)
    return list(hs)


# ---- lesson 00: the logit lens ------------------------------------------------------------------------------------

def lens_left_padded(m, prompts):
    "Correct another way: nnsight's own tokenizer pads on the LEFT, so position -1 is every prompt's last token."
    with torch.no_grad(), m.lm.trace(prompts):
        hs = nnsight.save([])
        for l in range(m.n_layers): hs.append(m.blocks[l].input[:, -1])
        hs.append(m.norm.input[:, -1])
    with torch.no_grad():
        return m.head(m.norm(torch.stack(list(hs), 1)))          # logits: the check compares their log_softmax


def lens_no_norm(m, prompts):
    inputs = m.encode(prompts)
    last = inputs["attention_mask"].sum(1) - 1
    h = torch.stack([x[torch.arange(len(last)), last] for x in _states(m, inputs)], 1)
    return m.head(h).log_softmax(-1)


def lens_padding(m, prompts):
    inputs = m.encode(prompts)                                    # right-padded, then position -1: padding for short prompts
    h = torch.stack([x[:, -1] for x in _states(m, inputs)], 1)
    return m.head(m.norm(h)).log_softmax(-1)


def lens_block_outputs(m, prompts):
    "Block outputs h[1..L], then the final norm's output (already normed) as the last row: two mistakes."
    with torch.no_grad(), m.lm.trace(prompts):
        hs = nnsight.save([])
        for l in range(m.n_layers): hs.append(m.blocks[l].output[:, -1])
        hs.append(m.norm.output[:, -1])
    return m.head(m.norm(torch.stack(list(hs), 1))).log_softmax(-1)


def test_logit_lens_check_passes_correct_answers(embedded):
    assert check_logit_lens(solutions.logit_lens, embedded).startswith("correct")
    assert check_logit_lens(lens_left_padded, embedded).startswith("correct")


def test_logit_lens_check_names_the_mistakes(embedded):
    m = embedded
    msg = fails(check_logit_lens, lens_no_norm, "missing final norm", m=m)
    assert "rows 0-30" in msg
    msg = fails(check_logit_lens, lens_padding, "wrong position (padding)", m=m)
    assert "prompt 2 ('The sky is', 3 tokens)" in msg and "prompt 1" not in msg      # the longest prompt is read right
    fails(check_logit_lens, lens_block_outputs, "off by one layer (block outputs)", "h[L] normed twice", m=m)
    fails(check_logit_lens, lambda m, ps: solutions.logit_lens(m, ps)[:, :-1], "missing h[L]", m=m)


# ---- lesson 01: scoring a multiple-choice item ------------------------------------------------------------------

def mc_variant(pos="t-1", start=0, norm=True, red="sum"):
    "An mc_score with chosen slips: `pos` 't' uses the state AT t; `start` 1 adds the prompt's last token; ..."
    def mc_score(m, prompt, choices):
        n_p = len(m.tokenizer(prompt)["input_ids"])
        out = []
        for c in choices:
            inputs = m.encode(prompt + c)
            ids = inputs["input_ids"][0]
            h = torch.stack([x[0] for x in _states(m, inputs)])
            ts = torch.arange(n_p - start, len(ids))
            st = ts - 1 if pos == "t-1" else ts
            with torch.no_grad():
                lp = (m.head(m.norm(h[:, st])) if norm else m.head(h[:, st])).log_softmax(-1)
            v = lp[:, torch.arange(len(ts)), ids[ts]]
            out.append(v.sum(-1) if red == "sum" else v.mean(-1))
        return torch.stack(out)
    return mc_score


def test_mc_score_check_passes_correct_answers(embedded):
    assert check_mc_score(solutions.mc_score, embedded).startswith("correct")
    assert check_mc_score(mc_variant(), embedded).startswith("correct")       # written independently of the solution


def test_mc_score_check_names_the_mistakes(embedded):
    m = embedded
    fails(check_mc_score, mc_variant(pos="t"), "off by one position (the state AT t)", m=m)
    fails(check_mc_score, mc_variant(start=1), "the prompt's last token counted as an answer token", m=m)
    fails(check_mc_score, mc_variant(red="mean"), "mean instead of sum", m=m)
    msg = fails(check_mc_score, mc_variant(norm=False), "missing final norm", m=m)
    assert "Slovenia" in msg                                               # says which item


# ---- lesson 02: skipping a layer, and the depth score -------------------------------------------------------------

def skip_variant(start=1, measure="t", quantity="update", denom="clean"):
    def skip_effect(m, text, s, t):
        inputs = m.encode([text, text])
        with torch.no_grad(), m.lm.trace(inputs):
            hs = nnsight.save([])
            for l in range(m.n_layers):
                h = m.blocks[l].input
                hs.append(h)
                if l == s:
                    out = m.blocks[s].output
                    out[1, start:t] = h[1, start:t]
            hs.append(m.norm.input)
        H = torch.stack(list(hs))
        if quantity == "update":
            D = H[1:] - H[:-1]
            eff = (D[:, 1] - D[:, 0]).norm(dim=-1) / (D[:, 0] if denom == "clean" else D[:, 1]).norm(dim=-1)
        else: eff = (H[1:, 1] - H[1:, 0]).norm(dim=-1) / H[1:, 0].norm(dim=-1)     # the residual streams
        return eff[:, t if measure == "t" else 0:].amax(1)
    return skip_effect


def test_skip_effect_check_passes_the_solution_and_later_layers_only(embedded):
    assert check_skip_effect(solutions.skip_effect, embedded).startswith("correct")
    later_only = lambda m, text, s, t: solutions.skip_effect(m, text, s, t)[s + 1:]
    assert check_skip_effect(later_only, embedded, cases=[(12, 9)]).startswith("correct")


def test_skip_effect_check_names_the_mistakes(embedded):
    m, case = embedded, [(10, 9)]
    fails(check_skip_effect, skip_variant(start=0), "skipping position 0 too", m=m, cases=case)
    fails(check_skip_effect, skip_variant(measure="all"), "measuring at positions < t", m=m, cases=case)
    fails(check_skip_effect, skip_variant(quantity="residual"), "residuals instead of updates", m=m, cases=case)
    fails(check_skip_effect, skip_variant(denom="skipped"), "divided by the skipped update", m=m, cases=case)


def depth_variant(cols="later", avg="mean", base=0, unit=1.0):
    def depth_score(eff):
        eff = np.asarray(eff); L = len(eff)
        e = np.array([(eff[l, l + 1:] if cols == "later" else eff[l]).sum() / ((L - 1 - l) if avg == "mean" else 1)
                      for l in range(L - 1)])
        return float(((np.arange(L - 1) + base) * e).sum() / e.sum()) / unit
    return depth_score


def test_depth_score_check():
    assert check_depth_score(solutions.depth_score).startswith("correct")
    assert check_depth_score(depth_variant()).startswith("correct")
    fails(check_depth_score, depth_variant(cols="all"), "counting layers at or before the skipped one")
    fails(check_depth_score, depth_variant(avg="sum"), "sum instead of mean over later layers")
    fails(check_depth_score, depth_variant(base=1), "1-based layers")
    fails(check_depth_score, lambda eff: depth_variant()(eff) / len(eff), "relative score")

    def with_last(eff):
        eff = np.asarray(eff); L = len(eff)
        e = np.array([eff[l, l + 1:].mean() for l in range(L)])         # the last layer: mean of nothing
        return float((np.arange(L) * e).sum() / e.sum())
    with pytest.warns(RuntimeWarning): fails(check_depth_score, with_last, "the last layer included")


# ---- lesson 03: item-grouped folds and a probe per layer ---------------------------------------------------------

def kfold(groups, k=5): return list(KFold(k, shuffle=True, random_state=0).split(np.zeros(len(groups))))
def first_item_groups(groups, k=5):
    return list(GroupKFold(k).split(np.zeros(len(groups)), groups=[g[0] for g in groups]))
def unpurged(groups, k=5):
    "Test folds drawn right, but the training set is everything else (includes stimuli sharing test items)."
    return [(np.setdiff1d(np.arange(len(groups)), te), te) for _, te in solutions.item_folds(groups, k)]
def train_on_all(groups, k=5): return [(np.arange(len(groups)), te) for _, te in solutions.item_folds(groups, k)]


def test_item_folds_check():
    assert check_item_folds(solutions.item_folds).startswith("correct")
    assert check_item_folds(lambda g, k: item_folds(g, cv=k)).startswith("correct")      # the library's own
    for wrong in (kfold, first_item_groups, unpurged):
        msg = fails(check_item_folds, wrong, "items leak across folds")
        assert "item '" in msg and "training stimulus" in msg and "test stimulus" in msg    # names the item and both sides
    fails(check_item_folds, train_on_all, "the same stimulus in train and test")
    fails(check_item_folds, lambda g, k: solutions.item_folds(g, k)[:1], "fewer than 2 folds")


def test_item_folds_check_shows_the_leaking_item():
    groups = {"toy": [("church", "organ"), ("church", "bell"), ("dog",), ("cat",), ("cow",), ("hen",)]}
    msg = fails(check_item_folds, lambda g, k: [([1, 2, 3], [0, 4, 5]), ([0, 4, 5], [1, 2, 3])], "items leak across folds",
                groups=groups, k=2)
    assert "item 'church'" in msg


def probe_svm(X, y, folds):
    "Correct another way: a linear SVM, the scaler inside the pipeline."
    return np.array([np.mean([make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=5000)).fit(X[tr, l], y[tr])
                              .score(X[te, l], y[te]) for tr, te in folds]) for l in range(X.shape[1])])


def probe_scaled_all(X, y, folds):
    X = np.stack([StandardScaler().fit_transform(X[:, l]) for l in range(X.shape[1])], 1)   # the scaler sees test stimuli
    return np.array([np.mean([LogisticRegression(max_iter=1000).fit(X[tr, l], y[tr]).score(X[te, l], y[te])
                              for tr, te in folds]) for l in range(X.shape[1])])


def probe_train_score(X, y, folds):
    return np.array([np.mean([make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X[tr, l], y[tr])
                              .score(X[tr, l], y[tr]) for tr, te in folds]) for l in range(X.shape[1])])


def test_probe_curve_check():
    assert check_probe_curve(solutions.probe_curve).startswith("correct")
    assert check_probe_curve(probe_svm).startswith("correct")
    msg = fails(check_probe_curve, probe_scaled_all, "scaler fitted on all data")
    assert "80 stimuli" in msg
    fails(check_probe_curve, probe_train_score, "tested on the training set")


def test_planted_probe_data_separate_the_mistakes():
    "The planted data make the mistakes visible: signal only at layers 1-2, and a training fit at the noise layers."
    X, y, groups = planted_probe(0)
    folds = item_folds(groups, cv=5, seed=0)
    held, train = solutions.probe_curve(X, y, folds), probe_train_score(X, y, folds)
    assert held[[1, 2]].min() > 0.85 and held[[0, 3]].max() < 0.7
    assert train[[0, 3]].min() > 0.95


def test_solutions_and_table():
    assert set(EXERCISES) == set(vars(solutions))
    for name, e in EXERCISES.items():
        assert callable(e["check"]) and e["lesson"][:2] in ("00", "01", "02", "03")
        assert solution_source(name).startswith(f"def {name}_solution")


# ---- views of single items ---------------------------------------------------------------------------------------

def test_choice_scores_match_mc_scores_and_mark_the_lead(embedded):
    it = factual(n=3, seed=0)[1]
    df = choice_scores(embedded, it)
    S = mc_scores(embedded, [it], progress=False)[0].numpy()
    assert len(df) == len(it.choices) * (embedded.n_layers + 1) and set(df.metric) == {"choice_logprob"}
    for j in range(len(it.choices)):
        got = df[df.choice_index == j].sort_values("layer").value.to_numpy()
        assert np.allclose(got, S[j], atol=1e-5)
    false = [j for j in range(len(it.choices)) if j not in it.correct]
    leads = S[it.correct[0]] > S[false].max(0)
    assert (df.drop_duplicates("layer").sort_values("layer").leads.to_numpy() == leads).all()
    assert df[df.best].choice.unique().tolist() == [it.best]
    assert set(df.choice_index[df.correct]) == set(it.correct)


def test_skip_tokens_agree_with_depthstudy_skip(embedded):
    m, s = embedded, 9
    T = len(m.tokenizer(SKIP_TEXT)["input_ids"])
    seed = 3
    t = draw_ts([T], 1, seed)[0][0]
    df = skip_tokens(m, SKIP_TEXT, s, t=t, cache=False)
    raw = skip_raw(m, [SKIP_TEXT], layers=[s], n_t=1, seed=seed, progress=False, cache=False)
    eff = df[(df.metric == "skip_effect") & df.measured].groupby("layer_b").value.max()
    assert list(eff.index) == list(range(s + 1, m.n_layers))
    assert np.allclose(eff.to_numpy(), raw["eff_max"][0, 0, s + 1:], atol=1e-4)
    out = df[df.metric == "skip_output"]
    assert np.isclose(out[out.measured].value.max(), raw["out_max"][0, 0], atol=1e-4)
    assert out.token.str.cat() == SKIP_TEXT and len(out) == T
    assert out.skipped.sum() == t - 1 and not out.skipped.iloc[0] and out.measured.sum() == T - t
    assert out[~out.measured & ~out.skipped].value.abs().max() < 1e-6    # position 0 is never changed
    with pytest.raises(ValueError, match="t must be in 2.."):
        skip_tokens(m, SKIP_TEXT, s, t=T)


def test_stimulus_decoding_trains_on_other_items(embedded):
    n, k = 80, 5
    df = stimulus_decoding(embedded, "relations", stimulus=k, label="related", n=n)
    ss = stimuli("relations", n=n)
    assert len(df) == embedded.n_layers + 1 and set(df.metric) == {"p_true"}
    assert df.stimulus.iloc[0] == ss[k].text and df.truth.iloc[0] == str(ss[k].labels["related"])
    train = next(tr for tr, te in item_folds([s.items for s in ss], cv=5) if k in te)
    assert not {it for i in train for it in ss[i].items} & set(ss[k].items)          # no shared item in training
    assert (df.n == len(train)).all()
    y = np.array([str(s.labels["related"]) for s in ss])
    assert np.allclose(df.chance, np.mean(y[train] == y[k]))
    assert df.value.between(0, 1).all()
    assert ((df.value > 0.5) == (df.predicted == df.truth)).all()                     # binary: right iff p > 0.5
    with pytest.raises(ValueError, match="continuous"):
        stimulus_decoding(embedded, "items", 0, label="log_size", n=40)
