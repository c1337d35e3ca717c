"Per-layer decoding (depthstudy.probes): planted signals, baselines, leak-free grouped CV, MC probe, alternation."
import numpy as np
import pandas as pd
import pytest
from depthstudy.probes import (item_folds, decode_layers, planted, mc_probe, control_labels, planted_types, probe_mc,
                               MIN_PERM)
from depthstudy.results import peak_band
from depthstudy.hierarchy import alternation, hierarchy, readout_positions
from depthstudy.stimuli import stimuli, LEVELS


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_binary_peaks_at_its_layer(seed):
    X, y = planted(n=120, n_slots=7, d=48, at=4, strength=1.5, seed=seed)
    df = decode_layers(X, y, kind="svm", n_perm=2, seed=seed)
    acc = df[df.metric == "accuracy"].set_index("layer").value
    auc = df[df.metric == "auc"].set_index("layer").value
    assert acc.idxmax() == 4 and auc.idxmax() == 4 and auc[4] > 0.85
    pb = peak_band(df, "auc").iloc[0]
    assert pb.peak_layer == 4 and 4 in pb.band
    assert set(df.columns) >= {"model", "n_layers", "task", "layer", "rel_depth", "metric", "value", "ci_low",
                               "ci_high", "n", "chance", "baseline", "baseline_low", "baseline_high"}
    assert (df.ci_low <= df.value).all() and (df.value <= df.ci_high).all()


def test_planted_continuous_and_logreg():
    X, y = planted(n=100, n_slots=5, d=32, at=1, continuous=True, seed=2)
    r2 = decode_layers(X, y, n_perm=0).set_index("layer")
    assert (r2.metric == "r2").all() and r2.value.idxmax() == 1 and r2.value[1] > 0.3
    assert (r2.chance == 0).all()
    Xb, yb = planted(n=100, n_slots=5, d=32, at=3, seed=3)
    lg = decode_layers(Xb, yb, kind="logreg", n_perm=0).query("metric == 'accuracy'").set_index("layer").value
    assert lg.idxmax() == 3


def test_shuffled_label_is_at_chance_within_its_band():
    X, y = planted(n=150, n_slots=4, d=24, at=2, strength=2.0, seed=5)
    y_shuf = np.random.default_rng(9).permutation(y)
    df = decode_layers(X, y_shuf, kind="svm", n_perm=0, task="shuffled")
    acc = df[df.metric == "accuracy"]
    auc = df[df.metric == "auc"]
    # chance lies inside the fold CI at (almost) every layer; the signal layer does not stand out
    assert (auc.ci_low <= 0.5).sum() + (auc.ci_high >= 0.5).sum() >= 2 * len(auc) - 1
    assert (acc.ci_low <= acc.chance + 0.02).all()
    assert abs(acc.value.mean() - 0.5) < 0.1


def test_permutation_baseline_sits_below_a_real_signal():
    X, y = planted(n=120, n_slots=3, d=24, at=1, strength=2.0, seed=6)
    df = decode_layers(X, y, n_perm=4, kind="svm").query("metric == 'auc'").set_index("layer")
    assert df.value[1] > df.baseline_high[1]
    assert abs(df.baseline[1] - 0.5) < 0.12
    assert df.p_perm.isna().all()                       # 4 permutations cannot give p < 1/5: no p-value at all


def test_p_perm_needs_19_permutations_and_ridge_99_is_cheap():
    import time
    X, y = planted(n=120, n_slots=4, d=24, at=1, strength=2.0, seed=6)
    assert MIN_PERM == 19
    df = decode_layers(X, y, n_perm=19, kind="ridge").query("metric == 'auc'").set_index("layer")
    assert df.p_perm[1] == pytest.approx(1 / 20) and df.drop(index=1).p_perm.max() > 0.2      # noise layers: anywhere
    t0 = time.perf_counter()
    d99 = decode_layers(X, y, n_perm=99, kind="ridge").query("metric == 'auc'").set_index("layer")
    took = time.perf_counter() - t0
    assert d99.p_perm[1] == pytest.approx(0.01) and d99.drop(index=1).p_perm.max() > 0.2
    assert took < 10, f"99 permutations of 4 layers took {took:.1f} s"   # measured ~0.4 s: one decomposition serves all


@pytest.mark.parametrize("level", LEVELS)
def test_grouped_cv_never_leaks_an_item_on_real_stimuli(level):
    ss = stimuli(level)
    g = [s.items for s in ss]
    folds = item_folds(g, cv=5, seed=0)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested) == list(range(len(ss)))  # every stimulus tested exactly once
    for tr, te in folds:
        tr_items = {it for i in tr for it in g[i]}
        te_items = {it for i in te for it in g[i]}
        assert not (tr_items & te_items)
        assert len(tr) >= 0.5 * (len(ss) - len(te)), "purging left too little to train on"


def test_item_folds_on_a_chain_purges():
    g = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f"), ("f", "g"), ("x",), ("y",)]
    for tr, te in item_folds(g, cv=2, seed=1):
        assert not ({it for i in tr for it in g[i]} & {it for i in te for it in g[i]})
    with pytest.raises(ValueError, match="groups has"):
        decode_layers(np.zeros((3, 2, 4)), [0, 1, 0], groups=["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, layers, d\]"):
        decode_layers(np.zeros((3, 4)), [0, 1, 0])
    with pytest.raises(ValueError, match="single class"):
        decode_layers(np.zeros((6, 2, 4)), [1] * 6)


def _mc_data(n_items=60, n_cand=4, at=2, seed=0, signal=2.5):
    rng = np.random.default_rng(seed)
    acts, corr = [], []
    for i in range(n_items):
        c = n_cand + (i % 2)  # items with different numbers of candidates
        a = rng.standard_normal((c, 5, 16)).astype(np.float32)
        k = int(rng.integers(c)); a[k, at, 0] += signal
        acts.append(a); corr.append([k])
    return acts, corr


def test_mc_probe_finds_layer_and_shuffled_null_is_low():
    acts, corr = _mc_data()
    df = mc_probe(acts, corr, cv=5)
    v = df.pivot(index="layer", columns="metric", values="value")
    assert v.mc1_probe.idxmax() == 2 and v.mc1_probe[2] > 0.7
    assert v.shuffled[2] < 0.45
    assert set(df.metric) == {"mc1_probe", "shuffled"}          # no keys: no control task
    ch = df[df.metric == "mc1_probe"].chance.iloc[0]
    assert ch == pytest.approx(np.mean([1 / 4, 1 / 5]))


def test_mc_probe_grouping_never_splits_an_item(monkeypatch):
    import depthstudy.probes as P
    acts, corr = _mc_data(n_items=30)
    seen = []
    orig = P._mc_acc
    def spy(scores, lab, item, test_items):
        seen.append((item, set(test_items)))
        return orig(scores, lab, item, test_items)
    monkeypatch.setattr(P, "_mc_acc", spy)
    real_fit = P.probe_estimator
    fits = []
    def est(kind, seed):
        e = real_fit(kind, seed); f = e.fit
        def fit(X, y): fits.append(len(X)); return f(X, y)
        e.fit = fit; return e
    monkeypatch.setattr(P, "probe_estimator", est)
    P.mc_probe(acts, corr, cv=3, layers=[0])
    n_cand = np.array([len(a) for a in acts])
    test_sets = [t for _, t in seen[::2]]  # (real, shuffled) alternate per fold
    assert sorted(i for t in test_sets for i in t) == list(range(30))
    for t, n_fit in zip(test_sets, fits[::2]):  # training rows = all candidates of the non-test items
        assert n_fit == n_cand[[i for i in range(30) if i not in t]].sum()


def test_alternation_detects_zigzag_and_not_smooth():
    lay = np.arange(20)
    base = [dict(model="m", n_layers=20, task=t, layer=int(l), metric="accuracy", value=0.6 + 0.1 * np.sin(l / 6 + k))
            for k, t in enumerate("abcd") for l in lay]
    smooth = pd.DataFrame(base)
    zig = smooth.assign(value=smooth.value + np.where((smooth.layer % 2 == 0) == smooth.task.isin(["a", "b"]), .04, -.04))
    s = alternation(smooth, n_shuffle=200).query("metric == 'flip_rate_mean'").iloc[0]
    z = alternation(zig, n_shuffle=200).query("metric == 'flip_rate_mean'").iloc[0]
    assert s.p_value > 0.5 and s.value < s.ci_low
    assert z.p_value < 0.01 and z.value > z.ci_high
    assert 0.55 < z.chance < 0.8  # random orders turn about 2/3 of the time
    per = alternation(zig, n_shuffle=50).query("metric == 'flip_rate'")
    assert len(per) == 18


def test_hierarchy_on_tiny_llama_both_readouts():
    from depthstudy.models import tiny_model
    m = tiny_model("llama")
    last = hierarchy(m, "items", n=40, n_perm=1, cv=4, batch_size=40,
                     cache=False, progress=False)
    assert set(last.task) == {"edible", "living", "man_made", "bigger_than_person", "log_size", "log_mass"}  # not category
    assert set(last.layer) == set(range(m.n_layers + 1))
    assert set(last[last.task == "log_size"].metric) == {"r2"}
    assert (last.readout == "last").all() and (last.site == "resid").all() and (last.n == 40).all()
    mean = hierarchy(m, "analogies", n=36, site="attn", readout="mean", n_perm=0, cv=3, batch_size=36,
                     cache=False, progress=False)
    assert set(mean.layer) == set(range(m.n_layers)) and (mean.rel_depth == mean.layer / m.n_layers).all()
    assert not mean.equals(last)
    ids = m.tokenizer("An apple")["input_ids"]   # the tiny word-level vocabulary: only <unk> tokens here
    assert readout_positions(m.tokenizer, ["An apple"], "mean") == [[len(ids) - 1]]  # falls back to the last token
    assert readout_positions(m.tokenizer, ["An apple"], "last") == "last"
    with pytest.raises(ValueError, match="readout"):
        hierarchy(m, "items", n=10, readout="first", cache=False, progress=False)


def test_hierarchy_on_embedded_model(embedded, tmp_path):
    from depthstudy.store import ActivationCache
    tok = embedded.tokenizer
    texts = ["An apple", "A church and an organ"]
    for t, pos in zip(texts, readout_positions(tok, texts, "mean")):
        ids = tok(t)["input_ids"]
        assert pos == [j for j, x in enumerate(ids) if x not in set(tok.all_special_ids)] and len(pos) >= 2
    df = hierarchy(embedded, "items", n=32, labels=["living"], n_perm=0, cv=4, batch_size=32,
                   cache=ActivationCache(tmp_path), progress=False)
    auc = df[df.metric == "auc"].set_index("layer").value
    assert len(auc) == embedded.n_layers + 1
    assert auc.max() > 0.75  # a real model knows which nouns are alive (measured: ~0.9 or more at most layers)


# ---- the closed-form ridge path, several labels at once, skill, level curves, peak bands ----------------------

def test_ridge_regression_matches_sklearn_ridgecv():
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler
    from depthstudy.probes import _ridge_fold, _ALPHAS
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 40)); w = rng.standard_normal(40)
    Y = np.stack([X @ w + rng.standard_normal(90), rng.standard_normal(90)], 1)   # a signal and pure noise
    tr, te = np.arange(70), np.arange(70, 90)
    P = _ridge_fold(X[tr], X[te], Y[tr], [1, 1])
    for j in range(2):
        sc = StandardScaler().fit(X[tr])
        ref = RidgeCV(alphas=_ALPHAS).fit(sc.transform(X[tr]), Y[tr, j]).predict(sc.transform(X[te]))
        assert np.allclose(P[:, j], ref, atol=1e-6)


def test_ridge_classifier_finds_planted_layer_and_multiclass():
    X, y = planted(n=120, n_slots=6, d=48, at=3, strength=1.5, seed=4)
    df = decode_layers(X, y, kind="ridge", n_perm=3)
    auc = df[df.metric == "auc"].set_index("layer")
    assert auc.value.idxmax() == 3 and auc.value[3] > 0.85 and (auc.kind == "ridge").all()
    assert auc.value[3] > auc.baseline_high[3]
    y3 = np.where(X[:, 3, 0] > 0.8, "a", np.where(X[:, 3, 0] < -0.8, "b", "c"))     # three classes from layer 3
    acc = decode_layers(X, y3, kind="ridge", n_perm=0).set_index("layer").value
    assert set(decode_layers(X, y3, kind="ridge", n_perm=0).metric) == {"accuracy"} and acc.idxmax() == 3


def test_several_labels_at_once_equal_one_by_one():
    X, y = planted(n=100, n_slots=4, d=24, at=2, seed=6)
    yc = X[:, 1, 0] + 0.1 * np.random.default_rng(1).standard_normal(100)
    both = decode_layers(X, {"cls": y, "cont": yc}, kind="ridge", n_perm=2)
    one = pd.concat([decode_layers(X, y, kind="ridge", n_perm=2, task="cls"),
                     decode_layers(X, yc, kind="ridge", n_perm=2, task="cont")])
    key = ["task", "layer", "metric"]
    a, b = both.sort_values(key).reset_index(drop=True), one.sort_values(key).reset_index(drop=True)
    assert np.allclose(a.value, b.value) and np.allclose(a.baseline, b.baseline)
    assert set(both[both.task == "cont"].metric) == {"r2"}
    svm = decode_layers(X, {"cls": y, "cont": yc}, kind="svm", n_perm=0)            # floats still go to ridge
    assert set(svm[svm.task == "cont"].kind) == {"ridge"} and set(svm[svm.task == "cls"].kind) == {"svm"}


def test_skill_and_level_curves():
    from depthstudy.hierarchy import skill, level_curves
    X, y = planted(n=100, n_slots=5, d=24, at=2, seed=7)
    yc = X[:, 2, 0] + 0.5 * np.random.default_rng(2).standard_normal(100)
    df = decode_layers(X, {"b": y, "c": yc}, kind="ridge", n_perm=2).assign(level="toy", site="resid", readout="last")
    sk = skill(df)
    assert set(sk.source_metric) == {"auc", "r2"} and (sk.metric == "skill").all() and (sk.chance == 0).all()
    auc = df.query("task == 'b' and metric == 'auc'").set_index("layer")
    s_b = sk[sk.task == "b"].set_index("layer")
    assert np.allclose(s_b.value, (auc.value - 0.5) / 0.5) and np.allclose(s_b.se, auc.se / 0.5)
    lc = level_curves(df)
    assert list(lc.columns[:11]) == ["model", "n_layers", "task", "layer", "rel_depth", "metric", "value", "ci_low",
                                     "ci_high", "n", "chance"]
    assert (lc.task == "toy").all() and (lc.n_labels == 2).all() and len(lc) == 5
    assert np.allclose(lc.set_index("layer").value, sk.groupby("layer").value.mean())
    assert lc.set_index("layer").value.idxmax() == 2


def test_peak_band_is_contiguous_and_uses_ci_without_se():
    vals = [.5, .86, .9, .87, .7, .6, .6, .6, .88, .6]
    toy = pd.DataFrame(dict(model="toy", n_layers=10, task="t", metric="acc", layer=range(10), value=vals,
                            ci_low=np.array(vals) - 0.098, ci_high=np.array(vals) + 0.098))   # SE = 0.05
    pb = peak_band(toy, "acc").iloc[0]
    assert pb.peak_layer == 2 and pb.band == [1, 2, 3] and np.isclose(pb.se, 0.05, atol=1e-3)  # not layer 8
    assert np.isclose(pb.rel_low, 0.1) and np.isclose(pb.rel_peak, 0.2)
    low = peak_band(toy.assign(value=-toy.value), "acc", higher=False).iloc[0]
    assert low.band == [1, 2, 3]
    with pytest.raises(ValueError, match="share"):
        peak_band(pd.concat([toy, toy]), "acc")
    two = pd.concat([toy.assign(site="resid"), toy.assign(site="attn", value=toy.value[::-1].to_numpy())])
    assert set(peak_band(two, "acc").site) == {"resid", "attn"}


def test_alternation_per_site_and_labels_by_level():
    lay = np.arange(12)
    rows = [dict(model="m", n_layers=12, level=lev, task="relation", layer=int(l), metric="skill", site=site,
                 value=0.5 + 0.1 * np.sin(l / 4 + k) + (0.05 * (-1) ** l * (1 if k % 2 else -1) if site == "attn" else 0))
            for site in ("attn", "mlp") for k, lev in enumerate(["relations", "analogies", "items"]) for l in lay]
    alt = alternation(pd.DataFrame(rows), n_shuffle=200).query("metric == 'flip_rate_mean'").set_index("site")
    assert set(alt.index) == {"attn", "mlp"} and (alt.n == 3).all()     # the two "relation" labels stay apart
    assert alt.loc["attn", "value"] > alt.loc["mlp", "value"] and alt.loc["attn", "p_value"] < 0.05


# ---- control tasks (Hewitt & Liang), the surface baseline, gains over h[0] -------------------------------------

def test_control_labels_are_a_fixed_function_of_the_type():
    keys = ["cat", "dog", "cat", ("a", "b"), "dog", ("a", "b"), 3]
    lab = control_labels(keys, seed=4)
    assert lab[0] == lab[2] and lab[1] == lab[4] and lab[3] == lab[5]
    assert set(lab) <= {0, 1} and len(set(lab)) == 2
    # a fixed function of the set of types, whatever their order
    perm = [6, 2, 0, 5, 1, 3, 4]
    assert list(control_labels([keys[i] for i in perm], seed=4)) == [lab[i] for i in perm]
    many = control_labels([f"w{i}" for i in range(90)], n_classes=3)
    assert np.bincount(many).tolist() == [30, 30, 30]
    assert sorted(control_labels(list("abcde"), None)) == [0, 1, 2, 3, 4]
    assert (control_labels(list("abcdefghij"), seed=1) != control_labels(list("abcdefghij"), seed=2)).any()


@pytest.mark.parametrize("kind", ["ridge", "svm"])
def test_control_task_is_learnable_only_by_memorising(kind):
    """Planted types: the real label decodes on new types; the control task is memorised on the training fold
    (high train accuracy) and at chance on the test fold under item-grouped folds; without grouping it leaks."""
    rows = []
    for seed in range(3):
        X, y, keys = planted_types(seed=seed)
        df = decode_layers(X, y, groups=keys, kind=kind, n_perm=0, control=True, seed=seed)
        v = df.pivot(index="layer", columns="metric", values="value")
        assert v.accuracy[2] > 0.85 and v.selectivity[2] > 0.3
        assert (v.control_train > 0.95).all()
        rows.append(v.control_test.to_numpy())
        ch = df[df.metric == "control_test"].chance
        assert ((ch >= 0.5) & (ch <= 0.6)).all()
        leaky = decode_layers(X, y, groups=None, kind=kind, n_perm=0, control=keys, seed=seed)
        assert leaky.query("metric == 'control_test'").value.mean() > 0.75
    test_acc = np.concatenate(rows)
    assert abs(test_acc.mean() - 0.5) < 0.08 and test_acc.max() < 0.65, test_acc
    # regression labels get a regression control (r2 at or below 0 on new types)
    X, y, keys = planted_types(seed=0)
    cont = decode_layers(X, {"c": X[:, 2, 0].astype(float) + 0.0}, groups=keys, kind="ridge", n_perm=0, control=True)
    r = cont.pivot(index="layer", columns="metric", values="value")
    assert (r.control_train > 0.5).all() and (r.control_test < 0.1).all()
    with pytest.raises(ValueError, match="keys"):
        decode_layers(X, y, control=keys[:5], n_perm=0)


def test_mc_control_task_memorised_on_train_items_only():
    rng = np.random.default_rng(0)
    acts, corr, keys = [], [], []
    for i in range(80):
        a = rng.standard_normal((4, 3, 128)).astype(np.float32); k = int(rng.integers(4))
        a[k, 1, 0] += 3.0; acts.append(a); corr.append([k]); keys.append([f"{i}-{j}" for j in range(4)])
    df = mc_probe(acts, corr, keys=keys)
    v = df.pivot(index="layer", columns="metric", values="value")
    assert set(df.metric) == {"mc1_probe", "shuffled", "control_train", "control_test", "selectivity"}
    assert (v.control_train > 0.85).all() and (v.control_test < 0.4).all() and abs(v.control_test.mean() - 0.25) < 0.08
    assert v.mc1_probe[1] > 0.7 and v.selectivity[1] > 0.35
    assert np.allclose(df.query("metric == 'control_test'").chance, 0.25)
    # answer strings shared across items: memorising carries over to test items (what selectivity subtracts)
    shared = [[f"w{(i % 10) * 4 + j}" for j in range(4)] for i in range(80)]
    acts2 = []
    proto = {w: rng.standard_normal((3, 128)).astype(np.float32) for ks in shared for w in ks}
    for ks in shared: acts2.append(np.stack([proto[w] + 0.3 * rng.standard_normal((3, 128)) for w in ks]).astype(np.float32))
    v2 = mc_probe(acts2, corr, keys=shared).pivot(index="layer", columns="metric", values="value")
    assert (v2.control_test > 0.8).all()


def test_probe_mc_surface_baseline_reads_the_answer_alone(tiny_llama):
    """question=False reads each choice's continuation alone. Items whose right answer is always the same word are
    solved from the answer text by itself (identical texts give identical activations), whatever the question."""
    from depthstudy.tasks import MCItem, Template
    from depthstudy.probes import _probe_texts
    m = tiny_llama(n_layers=2)
    rng = np.random.default_rng(7)                     # not mc_probe's seed: its null would copy these draws
    items = []
    for i in range(12):
        ch = ["good", "bad", "poor"]; k = int(rng.integers(3)); ch[0], ch[k] = ch[k], ch[0]
        items.append(MCItem(f"question {i} about thing {i * 7}", ch, [k], "toy"))
    t = Template(fmt="Q: {question}\nA:")
    assert _probe_texts(items[0], t, True) == [f"Q: {items[0].question}\nA: {c}" for c in items[0].choices]
    assert _probe_texts(items[0], t, False) == [f" {c}" for c in items[0].choices]
    bare = probe_mc(m, items, template=t, cv=4, cache=False, progress=False, question=False)
    assert (~bare.question).all()
    assert set(bare.metric) == {"mc1_probe", "shuffled", "control_train", "control_test", "selectivity"}
    v = bare.pivot(index="layer", columns="metric", values="value")
    assert (v.mc1_probe.loc[1:] == 1).all()            # the answer word alone gives it away (h[0] sees only its
    assert (v.control_test.loc[1:] == 1).all()         # last byte, "d" for good and bad); answer strings recur, so
    assert (v.shuffled < 0.7).all()                    # memorising them carries to test items; the null does not
    full = probe_mc(m, items, template=t, cv=4, cache=False, progress=False, control=False)
    assert full.question.all() and set(full.metric) == {"mc1_probe", "shuffled"}


def test_gain_over_the_reference_layer_is_paired_by_fold():
    X, y = planted(n=120, n_slots=5, d=24, at=3, strength=2.0, seed=1)
    X[:, 0] = X[:, 3]                               # layer 0 already carries what layer 3 carries
    df = decode_layers(X, y, kind="ridge", n_perm=0, ref_layer=0).query("metric == 'auc'").set_index("layer")
    assert np.isclose(df.gain[3], 0, atol=1e-9) and df.gain_low[3] <= 0 <= df.gain_high[3]
    assert (df.gain[[1, 2, 4]] < -0.2).all() and (df.gain_high[[1, 2, 4]] < 0).all()
    assert np.allclose(df.gain, df.value - df.value[0]) and (df.ref_layer == 0).all()
    sub = decode_layers(X, y, kind="ridge", n_perm=0, ref_layer=0, layers=[3, 4]).query("metric == 'auc'")
    assert list(sub.layer) == [3, 4] and np.allclose(sub.gain, df.gain[[3, 4]])   # ref computed though not listed
