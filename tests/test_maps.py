"Linear maps between models (depthstudy.maps) on tiny random-init models."
import numpy as np
import pytest
import torch
from depthstudy.maps import linear_maps, best_match, align_tokens, AlignmentError

TEXTS = [f"text number {i}: the quick brown fox jumps over the lazy dog {i * 7} times" for i in range(10)]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama()


def test_self_map_is_identity(tiny):
    df = linear_maps(tiny, tiny, TEXTS, cache=False, progress=False)
    L = tiny.n_layers
    err = df.query("metric == 'rel_error'").pivot(index="layer", columns="layer_b", values="value")
    r2 = df.query("metric == 'r2'").pivot(index="layer", columns="layer_b", values="value")
    assert list(err.index) == list(range(1, L + 1)) and list(err.columns) == list(range(1, L + 1))
    assert (np.diag(err) < 1e-3).all() and (np.diag(r2) > 0.999).all()
    bm = best_match(df)
    assert (bm.layer == bm.layer_b).all()
    assert (best_match(df, "r2").layer_b == bm.layer_b).all()
    bt = best_match(df, per="target")
    assert list(bt.layer_b) == list(range(1, L + 1)) and (bt.layer == bt.layer_b).all()
    with pytest.raises(ValueError, match="per"): best_match(df, per="both")
    off = err.to_numpy()[~np.eye(L, dtype=bool)]
    assert off.min() > 10 * np.diag(err).max()       # the diagonal is clearly best, not a tie
    row = df.iloc[0]
    assert row.model_b == "tiny" and row.n_layers_b == L and np.isclose(row.rel_depth, row.layer / L)
    assert np.isclose(row.rel_depth_b, row.layer_b / L)


def test_best_match_per_target_removes_an_easy_target():
    "A target layer that is easy to predict from anything wins every row; column-wise the diagonal shows."
    import pandas as pd
    err = np.array([[.30, .10, .60], [.60, .12, .30], [.90, .15, .20]])     # target layer 2 is easy for everyone
    rows = [dict(model="a", model_b="b", layer=i + 1, rel_depth=(i + 1) / 3, layer_b=j + 1, rel_depth_b=(j + 1) / 3,
                 metric="rel_error", value=err[i, j]) for i in range(3) for j in range(3)]
    df = pd.DataFrame(rows)
    assert list(best_match(df).layer_b) == [2, 2, 2]
    bt = best_match(df, per="target")
    assert list(bt.layer_b) == [1, 2, 3] and list(bt.layer) == [1, 1, 3]


def test_map_matches_numpy_least_squares(tiny):
    "alpha=0 equals numpy's least squares with intercept on the same train/test split."
    from depthstudy.maps import _split
    df = linear_maps(tiny, tiny, TEXTS, alpha=0.0, layers_a=[2], layers_b=[3], cache=False, progress=False)
    train, test = _split(len(TEXTS), 0.2, 0)
    with torch.no_grad():
        hs = [tiny.hf(**{k: v for k, v in tiny.encode([t]).items()}, output_hidden_states=True).hidden_states
              for t in TEXTS]
    X = lambda idx: np.concatenate([hs[i][2][0, 1:].double().numpy() for i in idx])
    Y = lambda idx: np.concatenate([hs[i][3][0, 1:].double().numpy() for i in idx])
    Xtr = np.c_[X(train), np.ones(len(X(train)))]
    W = np.linalg.lstsq(Xtr, Y(train), rcond=None)[0]
    pred = np.c_[X(test), np.ones(len(X(test)))] @ W
    rel = (np.linalg.norm(pred - Y(test), axis=1) / np.linalg.norm(Y(test), axis=1)).mean()
    got = df.query("metric == 'rel_error'").value.item()
    assert got == pytest.approx(rel, rel=1e-4)


def test_different_tokenizers_align_by_offsets(tiny_llama, byte_tokenizer):
    merges = [("t", "h"), ("th", "e"), ("Ġ", "t"), ("o", "x"), ("Ġ", "f")]
    a = tiny_llama(n_layers=3, seed=1, name="a")
    b = tiny_llama(n_layers=5, seed=2, tok=byte_tokenizer(merges), name="b")
    text = "the fox then the ox"
    pa, pb = align_tokens(a, b, text)
    ea, eb = a.tokenizer(text, return_offsets_mapping=True), b.tokenizer(text, return_offsets_mapping=True)
    assert len(eb["input_ids"]) < len(ea["input_ids"]) and 0 < len(pb) < len(pa) + 1
    assert [ea["offset_mapping"][k][1] for k in pa] == [eb["offset_mapping"][k][1] for k in pb]
    assert 0 not in pa and 0 not in pb
    df = linear_maps(a, b, TEXTS, cache=False, progress=False)
    assert set(df.layer) == {1, 2, 3} and set(df.layer_b) == {1, 2, 3, 4, 5} and (df.model_b == "b").all()
    assert df.value.notna().all()


def test_slow_tokenizer_cannot_align(tiny_llama, byte_tokenizer):
    from transformers import PreTrainedTokenizer
    a = tiny_llama(n_layers=2, name="a")
    b = tiny_llama(n_layers=2, tok=byte_tokenizer([("t", "h")]), name="b")
    b.tokenizer.__class__ = type("Slow", (type(b.tokenizer),), {"is_fast": property(lambda self: False)})
    with pytest.raises(AlignmentError, match="fast tokenizer"):
        align_tokens(a, b, "the fox")


def test_errors(tiny):
    with pytest.raises(ValueError, match="2 texts"): linear_maps(tiny, tiny, TEXTS[:1], cache=False, progress=False)
    with pytest.raises(ValueError): linear_maps(tiny, tiny, TEXTS, layers_a=[9], cache=False, progress=False)
    with pytest.raises(ValueError): best_match(linear_maps(tiny, tiny, TEXTS[:3], cache=False, progress=False).iloc[:0])


def test_remote_local_same_numbers(tiny_llama):
    a, b = tiny_llama(n_layers=2), tiny_llama(n_layers=2, remote="local")
    x = linear_maps(a, a, TEXTS[:4], cache=False, progress=False)
    y = linear_maps(b, b, TEXTS[:4], cache=False, progress=False)
    np.testing.assert_allclose(x.value, y.value, rtol=1e-6, atol=1e-9)


def test_text_bootstrap_equals_recomputing_each_resample():
    "The per-text sums give, for every resample of whole texts, the rel_error and r2 computed from scratch."
    from depthstudy.maps import _text_boot
    from depthstudy.results import resample, percentile_ci
    g = torch.Generator().manual_seed(0)
    tid = torch.tensor([0] * 5 + [1] * 3 + [2] * 7 + [3] * 4)
    Y = torch.randn(len(tid), 6, generator=g, dtype=torch.float64) + 2.0
    res = 0.3 * torch.randn(len(tid), 6, generator=g, dtype=torch.float64) * (1 + tid[:, None])
    yn = Y.norm(dim=-1)
    boots = resample(4, 200, seed=3)
    got = _text_boot(res, Y, yn, tid, 4, boots, 0.9)
    rel, r2 = [], []
    for b in boots:
        idx = torch.cat([torch.nonzero(tid == t).ravel() for t in b])
        rel.append(float((res[idx].norm(dim=-1) / yn[idx]).mean()))
        yy = Y[idx]
        r2.append(float(1 - (res[idx] ** 2).sum() / ((yy - yy.mean(0)) ** 2).sum()))
    assert np.allclose(got["rel_error"], percentile_ci(np.array(rel), 0.9))
    assert np.allclose(got["r2"], percentile_ci(np.array(r2), 0.9))
    assert got["rel_error"][0] < got["rel_error"][1]


def test_map_intervals_cover_the_estimate(tiny_llama):
    a, b = tiny_llama(n_layers=2, seed=1, name="a"), tiny_llama(n_layers=3, seed=2, name="b")
    df = linear_maps(a, b, TEXTS, test_frac=0.5, n_boot=300, cache=False, progress=False)
    assert (df.n_texts == int(round(len(TEXTS) * 0.5))).all()
    assert (df.ci_low <= df.value + 1e-12).all() and (df.value <= df.ci_high + 1e-12).all()
    assert (df.ci_high > df.ci_low).all()                      # texts differ, so the interval has width
    one = linear_maps(a, b, TEXTS[:3], test_frac=0.3, cache=False, progress=False)   # one test text: no interval
    assert one.ci_low.isna().all()
