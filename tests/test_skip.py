"Layer-skip effects (depthstudy.skip): batched path vs independent single-skip runs on tiny random-init models."
import numpy as np
import pandas as pd
import pytest
import torch
from depthstudy.skip import skip_effects, skip_raw, depth_score, draw_ts, plan_skip, summarise_hops, depth_trend
from depthstudy.executor import choose_engine

TEXTS = ["hello world, this is a test", "short one!", "another longer text with several words in it"]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama()


def single_skip(hf, ids, s, mode, lo, hi):
    "Plain PyTorch hooks, one text, one skipped layer at positions [lo, hi): updates D [L, T, d] and probs [T, V]."
    L = hf.config.num_hidden_layers
    hs, hooks = {}, []
    def keep_in(l):
        return lambda mod, args, kw: hs.__setitem__(l, (args[0] if args else kw["hidden_states"]).clone())
    for l, layer in enumerate(hf.model.layers):
        hooks.append(layer.register_forward_pre_hook(keep_in(l), with_kwargs=True))
    hooks.append(hf.model.norm.register_forward_pre_hook(keep_in(L), with_kwargs=True))
    if s is not None:
        layer = hf.model.layers[s]
        if mode == "block":
            store = {}
            hooks.append(layer.register_forward_pre_hook(
                lambda mod, args, kw: store.__setitem__("x", (args[0] if args else kw["hidden_states"]).clone()), with_kwargs=True))
            def fix(mod, i, o):
                o = o.clone(); o[:, lo:hi] = store["x"][:, lo:hi]; return o
            hooks.append(layer.register_forward_hook(fix))
        else:
            mod = layer.self_attn if mode == "attn" else layer.mlp
            def zero(m_, i, o):
                if isinstance(o, tuple):
                    a = o[0].clone(); a[:, lo:hi] = 0; return (a,) + tuple(o[1:])
                o = o.clone(); o[:, lo:hi] = 0; return o
            hooks.append(mod.register_forward_hook(zero))
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids).logits
    finally:
        for h in hooks: h.remove()
    D = torch.stack([hs[l + 1] - hs[l] for l in range(L)])[:, 0]
    return D.double(), logits[0].double().softmax(-1)


@pytest.mark.parametrize("engine", ["nnsight", "direct"])
@pytest.mark.parametrize("mode", ["block", "attn", "mlp"])
@pytest.mark.parametrize("variant", ["future", "current"])
def test_batched_equals_single_skip(tiny, mode, variant, engine):
    L = tiny.n_layers
    raw = skip_raw(tiny, TEXTS, mode=mode, variant=variant, n_t=2, seed=3, batch_size=7, progress=False, engine=engine)
    lengths = [int(x) for x in tiny.encode(TEXTS)["attention_mask"].sum(1)]
    ts = draw_ts(lengths, 2, 3) if variant == "future" else [[None]] * len(TEXTS)
    assert raw["ts"] == ts
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
        T = ids.shape[1]
        D0, p0 = single_skip(tiny.hf, ids, None, mode, 0, 0)
        for s in range(L):
            emax, omax = np.zeros(L), 0.0
            for t in ts[i]:
                hi, lo = (t, t) if t is not None else (T, 1)
                D, p = single_skip(tiny.hf, ids, s, mode, 1, hi)
                e = ((D - D0)[:, lo:].norm(dim=-1) / D0[:, lo:].norm(dim=-1).clamp(min=1e-6)).amax(1)
                emax = np.maximum(emax, e.numpy()); omax = max(omax, float((p - p0)[lo:].norm(dim=-1).max()))
            np.testing.assert_allclose(raw["eff_max"][i, s], emax, atol=1e-5)
            assert raw["out_max"][i, s] == pytest.approx(omax, abs=1e-5)
    assert raw["eff_max"].max() > 0.01          # the skips do something


def _saved(model, work, batch, engine):
    "What one batch's pass saves, by either engine: eff [R, P, L], out [R, P]."
    got = []                                   # filled inside the trace (a name bound there does not reach this frame)
    if engine == "direct": got.append(work.direct(model, batch))
    else:
        with torch.no_grad(), model.lm.trace(batch.inputs):
            got.append(work.body(model, batch))
    return torch.stack(list(got[0]["eff"]), -1), got[0]["out"]


@pytest.mark.parametrize("engine", ["nnsight", "direct"])
def test_clean_rows_have_zero_effect(tiny, engine):
    "Skipping nothing: clean rows packed in a batch with skipped rows show no effect at all (no leakage)."
    work = plan_skip(tiny.tokenizer, tiny.shape, TEXTS, layers=[0, 1, 2], n_t=1, batch_size=64)
    b = work.batches()[0]
    assert len(b.spec.pieces) == 3                  # the three texts, each with its clean row, in one pass
    eff, out = _saved(tiny, work, b, engine)
    rows = b.spec.rows
    clean = [r for r, (i, s, t) in enumerate(rows) if s is None]
    assert len(clean) == 3
    assert eff[clean].abs().max() == 0 and out[clean].abs().max() == 0
    skipped = [r for r, (i, s, t) in enumerate(rows) if s is not None]
    assert eff[skipped].max() > 0


def test_dead_block_has_zero_effect(tiny_llama):
    m = tiny_llama(seed=1)
    dead = 2
    with torch.no_grad():
        m.hf.model.layers[dead].self_attn.o_proj.weight.zero_()
        m.hf.model.layers[dead].mlp.down_proj.weight.zero_()
    for mode in ("block", "attn", "mlp"):
        for variant in ("future", "current"):
            raw = skip_raw(m, TEXTS, mode=mode, variant=variant, n_t=2, cache=False, progress=False)
            # effects exactly 0; the output only up to float noise (the direct engine computes the clean and the
            # skipped distributions in different head calls)
            assert raw["eff_max"][:, dead].max() == 0 and raw["out_max"][:, dead].max() < 1e-6
            assert raw["eff_max"][:, dead - 1].max() > 0


def test_tidy_table_and_depth_score(tiny):
    L = tiny.n_layers
    df = skip_effects(tiny, TEXTS, n_t=2, cache=False, progress=False)
    se = df.query("metric == 'skip_effect'")
    assert (se.layer_b > se.layer).all() and len(se.query("stat == 'max'")) == L * (L - 1) // 2
    assert np.allclose(se.rel_depth_b, se.layer_b.astype(float) / L)
    assert len(df.query("metric == 'skip_output'")) == 2 * L
    mx = se.query("stat == 'max'").set_index(["layer", "layer_b"]).value
    mean = se.query("stat == 'mean'").set_index(["layer", "layer_b"]).value
    assert (mean <= mx + 1e-12).all()
    per = skip_effects(tiny, TEXTS, n_t=2, per_item=True, cache=False, progress=False)
    pm = per.query("metric == 'skip_effect' and stat == 'max'").groupby(["layer", "layer_b"]).value.max()
    np.testing.assert_allclose(pm.sort_index(), mx.sort_index())
    ds = depth_score(per)
    assert len(ds) == len(TEXTS) and "item" in ds
    # hand computation for item 0
    d0 = per.query("metric == 'skip_effect' and stat == 'max' and item == 0")
    e = {l: d0[d0.layer == l].value.sum() / (L - 1 - l) for l in range(L - 1)}
    assert ds.depth_score[0] == pytest.approx(sum(l * v for l, v in e.items()) / sum(e.values()))


def test_layers_subset_and_errors(tiny):
    a = skip_raw(tiny, TEXTS, layers=[1, 3], cache=False, progress=False)
    b = skip_raw(tiny, TEXTS, cache=False, progress=False)
    np.testing.assert_allclose(a["eff_max"], b["eff_max"][:, [1, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="mode"): skip_raw(tiny, TEXTS, mode="heads", cache=False, progress=False)
    with pytest.raises(ValueError, match="variant"): skip_raw(tiny, TEXTS, variant="past", cache=False, progress=False)
    with pytest.raises(ValueError, match="out of range"): skip_raw(tiny, TEXTS, layers=[4], cache=False, progress=False)
    with pytest.raises(ValueError, match="at least 3"): skip_raw(tiny, ["a"], cache=False, progress=False)
    with pytest.raises(ValueError, match="batch_size"): skip_raw(tiny, TEXTS, batch_size=1, cache=False, progress=False)


@pytest.mark.parametrize("family", ["llama", "qwen3", "olmo2", "gemma2", "gemma3_text", "gpt2"])
def test_engines_agree_on_every_family(family):
    "The direct engine (plain hooks, wavefront) against the nnsight trace, on tiny models of each Arch family."
    from depthstudy.models import tiny_model
    m = tiny_model(family, n_layers=4)
    texts = ["the cat sat on the mat and the dog ran", "one plus two equals three", "what is the capital of france"]
    for mode in ("block", "attn", "mlp"):
        for variant in ("future", "current"):
            kw = dict(mode=mode, variant=variant, n_t=2, batch_size=5, progress=False)
            a, b = skip_raw(m, texts, engine="nnsight", **kw), skip_raw(m, texts, engine="direct", **kw)
            for k in ("eff_max", "eff_sum", "out_max", "out_sum", "count"):
                np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=f"{family} {mode} {variant} {k}")
            assert a["eff_max"].max() > 0.01


def test_engine_choice(tiny_llama):
    local, remote = tiny_llama(n_layers=2), tiny_llama(n_layers=2, remote="local")
    work = plan_skip(local.tokenizer, local.shape, TEXTS)
    assert choose_engine(local, work, False, "auto") == "direct" and choose_engine(remote, work, "local", "auto") == "nnsight"
    with pytest.raises(ValueError, match="engine"): skip_raw(local, TEXTS, engine="fast", cache=False, progress=False)
    with pytest.raises(ValueError, match="remote"): skip_raw(remote, TEXTS, engine="direct", cache=False, progress=False)
    n0 = local.n_forward
    skip_raw(local, TEXTS[:1], cache=False, progress=False)
    assert local.n_forward > n0                      # the direct engine counts its passes too


def test_remote_local_same_numbers(tiny_llama):
    a, b = tiny_llama(n_layers=3), tiny_llama(n_layers=3, remote="local")
    for mode in ("block", "attn"):
        x = skip_raw(a, TEXTS[:2], mode=mode, n_t=2, cache=False, progress=False)
        y = skip_raw(b, TEXTS[:2], mode=mode, n_t=2, cache=False, progress=False)
        np.testing.assert_allclose(x["eff_max"], y["eff_max"], atol=1e-6)
        np.testing.assert_allclose(x["out_sum"], y["out_sum"], atol=1e-6)


def hop_items():
    from depthstudy.tasks import MCItem
    qs = [("one plus one", "two", 1), ("two and two", "four", 1), ("ten minus three", "seven", 1),
          ("start at two, add three, double it", "ten", 2), ("start at one, add one, add one", "three", 2),
          ("five, times two, minus one, plus two", "eleven", 3)]
    return [MCItem(q, [a, "zero"], [0], f"toy-{h}", meta=dict(hops=h)) for q, a, h in qs]


def test_depth_vs_hops_groups_and_matches_depth_score(tiny):
    from depthstudy.skip import depth_vs_hops
    from depthstudy.tasks import Template
    items = hop_items()
    per = depth_vs_hops(tiny, items, n_t=2, per_item=True, only_correct=False, cache=False, progress=False)
    sc = per.query("metric == 'depth_score'").sort_values("item")
    assert list(sc.hops) == [1, 1, 1, 2, 2, 3] and set(sc.task) == {"toy"} and sc.layer.isna().all()
    # the same numbers as the two-step path: per-item skip effects on the teacher-forced texts -> depth_score
    texts = [Template().prompt(it) + Template().continuation(it.choices[it.correct[0]]) for it in items]
    ref = depth_score(skip_effects(tiny, texts, n_t=2, per_item=True, cache=False, progress=False)).sort_values("item")
    np.testing.assert_allclose(sc.value.to_numpy(), ref.depth_score.to_numpy(), rtol=1e-9)
    assert sc.value.between(0, tiny.n_layers - 2).all()
    summ = depth_vs_hops(tiny, items, n_t=2, only_correct=False, cache=False, progress=False)
    ds = summ.query("metric == 'depth_score'").set_index("hops")
    assert list(ds.index) == [1, 2, 3] and list(ds.n) == [3, 2, 1]
    for h in (1, 2, 3):
        assert ds.value[h] == pytest.approx(sc[sc.hops == h].value.mean())
    assert ds.ci_low[1] <= ds.value[1] <= ds.ci_high[1] and np.isnan(ds.ci_low[3])   # one item: no CI
    rel = summ.query("metric == 'rel_depth_score'").set_index("hops").value
    np.testing.assert_allclose(rel.to_numpy(), ds.value.to_numpy() / tiny.n_layers)
    assert set(depth_vs_hops(tiny, items[:2], n_t=1, task="mine", only_correct=False, cache=False,
                             progress=False).task) == {"mine"}


def test_depth_vs_hops_scores_only_the_items_the_model_solves(tiny):
    "Default (the paper's): each item is first answered by the model; accuracy per hop count; depth only for solved items."
    from depthstudy.skip import depth_vs_hops
    from depthstudy.mc import mc_scores
    from depthstudy.tasks import Template
    items = hop_items()
    per = depth_vs_hops(tiny, items, n_t=2, per_item=True, cache=False, progress=False)
    ok = per.query("metric == 'correct'").sort_values("item")
    # the model's own answer: MC1 of its output distribution (the lens at the last layer, same template)
    S = mc_scores(tiny, items, template=Template(), cache=False, progress=False)
    want = [float(s[0, -1] > s[1, -1]) for s in S]
    assert ok.value.tolist() == want and 0 < sum(want) < len(want)      # the tiny model solves some, not all
    solved = set(ok[ok.value == 1].item)
    assert set(per.query("metric == 'depth_score'").item) == solved
    summ = depth_vs_hops(tiny, items, n_t=2, cache=False, progress=False)
    acc = summ.query("metric == 'accuracy'").set_index("hops")
    for h in (1, 2, 3):
        assert acc.value[h] == pytest.approx(np.mean([w for w, it in zip(want, items) if it.meta["hops"] == h]))
    assert (acc.chance == 0.5).all()


def test_depth_vs_hops_errors(tiny):
    from depthstudy.skip import depth_vs_hops
    items = hop_items()
    items[2].meta = {}
    with pytest.raises(ValueError, match="hops"): depth_vs_hops(tiny, items, cache=False, progress=False)
    with pytest.raises(ValueError, match="at least one"): depth_vs_hops(tiny, [], cache=False, progress=False)
    with pytest.raises(ValueError, match="stat"): depth_vs_hops(tiny, hop_items(), stat="median", cache=False, progress=False)


def test_summarise_hops_and_depth_trend(tiny):
    from depthstudy.skip import depth_vs_hops
    items = hop_items()
    per = depth_vs_hops(tiny, items, n_t=2, per_item=True, only_correct=False, cache=False, progress=False)
    # the default summary is summarise_hops of the per-item table
    summ = depth_vs_hops(tiny, items, n_t=2, only_correct=False, cache=False, progress=False)
    got = summarise_hops(per)
    assert list(got.columns) == list(summ.columns)
    np.testing.assert_allclose(got.value, summ.value); np.testing.assert_allclose(got.ci_low, summ.ci_low)
    assert list(got.hops) == list(summ.hops) and list(got.metric) == list(summ.metric)
    # the slope per hop is the least-squares slope of the per-item scores; its CI resamples items within hops
    tr = depth_trend(per)
    r = per.query("metric == 'rel_depth_score'")
    assert len(tr) == 1 and tr.metric.iloc[0] == "rel_depth_score_per_hop" and tr.n.iloc[0] == 6
    assert tr.value.iloc[0] == pytest.approx(np.polyfit(r.hops, r.value, 1)[0])
    assert np.isnan(tr.ci_low.iloc[0])                   # hops 3 has one item: no CI
    two = per[per.hops < 3]
    t2 = depth_trend(two, metric="depth_score", n_boot=200)
    assert t2.ci_low.iloc[0] <= t2.value.iloc[0] <= t2.ci_high.iloc[0] and t2.hops_tested.iloc[0] == "1,2"
    # a made-up table whose score grows by exactly 0.1 per hop, with noise: the CI must exclude 0
    rng = np.random.default_rng(0)
    rows = [dict(per.iloc[0], item=i, hops=h, metric="rel_depth_score", value=0.1 * h + rng.normal(0, .01))
            for i, h in enumerate([1] * 10 + [2] * 10 + [3] * 10)]
    fake = pd.DataFrame(rows)
    t3 = depth_trend(fake)
    assert t3.value.iloc[0] == pytest.approx(0.1, abs=0.01) and t3.ci_low.iloc[0] > 0.08
    with pytest.raises(ValueError, match="per_item=True"): depth_trend(summ.drop(columns="hops"))
    with pytest.raises(ValueError, match="per_item=True"): summarise_hops(summ)


def test_detectable_slope_has_the_power_it_claims():
    "A slope equal to detectable_slope is found (two-sided 5% test) in about 80% of simulated designs; half of it rarely."
    from depthstudy.skip import detectable_slope
    from scipy import stats
    hops = np.repeat([2, 3, 4], 20)
    sd = 0.05
    d = detectable_slope(hops, sd)
    assert d == pytest.approx(2.8016 * sd / np.sqrt(((hops - hops.mean()) ** 2).sum()), rel=1e-3)
    rng = np.random.default_rng(0)
    def power(slope, runs=2000):
        hits = 0
        for _ in range(runs):
            y = 0.3 + slope * hops + rng.normal(0, sd, len(hops))
            hits += stats.linregress(hops, y).pvalue < 0.05
        return hits / runs
    assert 0.74 < power(d) < 0.86 and power(d / 2) < 0.4
    assert detectable_slope(np.repeat([2, 3, 4], 80), sd) == pytest.approx(d / 2)      # 4x the items: half the slope
    assert np.isnan(detectable_slope([3, 3, 3], sd))                                    # one hop count: no slope


def test_depth_trend_reports_the_detectable_slope():
    from depthstudy.skip import depth_trend, detectable_slope
    rng = np.random.default_rng(1)
    hops = np.repeat([1, 2, 3], 15)
    y = 0.4 + 0.02 * hops + rng.normal(0, 0.05, len(hops))
    per = pd.DataFrame(dict(model="m", n_layers=10, task="t", layer=np.nan, hops=hops, metric="rel_depth_score", value=y, n=1, item=range(len(y))))
    tr = depth_trend(per, n_boot=300)
    fit = np.polyfit(hops, y, 1)
    sd = np.sqrt(((y - np.polyval(fit, hops)) ** 2).sum() / (len(y) - 2))
    assert tr.value.item() == pytest.approx(fit[0])
    assert tr.min_slope.item() == pytest.approx(detectable_slope(hops, sd)) and tr.n_per_hop.item() == "15,15,15"
