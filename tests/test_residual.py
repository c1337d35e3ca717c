"Residual-stream analyses (depthstudy.residual) against hand computations from raw PyTorch hooks."
import os
from pathlib import Path
import numpy as np
import pytest
import torch
from depthstudy.residual import contributions
from depthstudy.lens import logit_lens_depth
from depthstudy.tasks import gsm8k_texts

TEXTS = ["hello world, this is a test", "short one", "another longer text with several words in it", "x y"]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama()


def hooked_parts(model, texts):
    "h, a, m (and the block output o) per layer from plain forward hooks, one text at a time (no padding): lists of [L, T, d]."
    hf = model.hf
    L = hf.config.num_hidden_layers
    store = {}
    hooks = []
    for l, layer in enumerate(hf.model.layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda mod, args, kw, l=l: store.__setitem__(("h", l), (args[0] if args else kw["hidden_states"]).clone()),
            with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(lambda mod, i, o, l=l: store.__setitem__(("a", l), o[0].clone())))
        hooks.append(layer.mlp.register_forward_hook(lambda mod, i, o, l=l: store.__setitem__(("m", l), o.clone())))
        hooks.append(layer.register_forward_hook(lambda mod, i, o, l=l: store.__setitem__(("o", l), (o[0] if isinstance(o, tuple) else o).clone())))
    out = []
    try:
        with torch.no_grad():
            for t in texts:
                ids = hf_tok(model.tokenizer, t)
                hf(input_ids=ids)
                out.append({k: torch.stack([store[(k, l)][0] for l in range(L)]).double() for k in "hamo"})
    finally:
        for h in hooks: h.remove()
    return out


def hf_tok(tok, t): return torch.tensor([tok(t)["input_ids"]])


def hand_metrics(parts):
    "Per-token metric arrays [T_all, L, 6] over positions >= 1 of every text."
    rows = []
    for p in parts:
        h, a, m = p["h"][:, 1:], p["a"][:, 1:], p["m"][:, 1:]
        cos = lambda x, y: (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
        r = torch.stack([a.norm(dim=-1) / h.norm(dim=-1), m.norm(dim=-1) / (h + a).norm(dim=-1),
                         (a + m).norm(dim=-1) / h.norm(dim=-1), cos(a, h), cos(m, h + a), cos(a + m, h),
                         h.norm(dim=-1), a.norm(dim=-1), m.norm(dim=-1)], -1)   # [L, T, 9]
        rows.append(r.transpose(0, 1))
    return torch.cat(rows)


def test_contributions_match_hooks(tiny):
    parts = hooked_parts(tiny, TEXTS)
    # the Arch contract: h[l+1] = h[l] + a[l] + m[l]
    for p in parts: assert torch.allclose(p["h"] + p["a"] + p["m"], p["o"], atol=1e-5)
    ref = hand_metrics(parts)
    df = contributions(tiny, TEXTS, batch_size=3, progress=False)   # batches of unequal lengths -> padding
    names = ["attn_rel", "mlp_rel", "block_rel", "attn_cos", "mlp_cos", "block_cos", "norm_h", "norm_a", "norm_m"]
    for k, name in enumerate(names):
        mean = df.query("metric == @name and stat == 'mean'").sort_values("layer")
        mx = df.query("metric == @name and stat == 'max'").sort_values("layer")
        np.testing.assert_allclose(mean.value, ref[:, :, k].mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mx.value, ref[:, :, k].amax(0).numpy(), rtol=1e-5, atol=1e-6)
        assert (mean.n == len(ref)).all()
        assert (mean.ci_low <= mean.value + 1e-12).all() and (mean.ci_high >= mean.value - 1e-12).all()
    assert set(df.layer) == set(range(4)) and np.allclose(df.rel_depth, df.layer / 4)


def test_contributions_token_weighted_not_prompt_weighted(tiny):
    "A long and a short text: the mean must weight tokens, so it differs from the mean of per-text means."
    texts = [TEXTS[2] * 3, "ab"]
    parts = hooked_parts(tiny, texts)
    per_text = [hand_metrics([p])[:, :, 0].mean(0) for p in parts]
    ref = hand_metrics(parts)[:, :, 0].mean(0)
    got = contributions(tiny, texts, progress=False).query("metric == 'attn_rel' and stat == 'mean'").value.to_numpy()
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5)
    assert not np.allclose(got, ((per_text[0] + per_text[1]) / 2).numpy(), rtol=1e-3)


def test_batch_size_invariance(tiny):
    a = contributions(tiny, TEXTS, batch_size=1, progress=False)
    b = contributions(tiny, TEXTS, batch_size=4, progress=False)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-6)


def test_logit_lens_depth_matches_manual(tiny):
    hf, k = tiny.hf, 5
    df = logit_lens_depth(tiny, TEXTS, k=k, batch_size=3, progress=False)
    kls, ovs = [], []
    with torch.no_grad():
        for t in TEXTS:
            out = hf(input_ids=hf_tok(tiny.tokenizer, t), output_hidden_states=True)
            hs = out.hidden_states      # embeddings, after each block (last one already normed by HF)
            fin = out.logits[0, 1:].double()
            lpf = fin.log_softmax(-1)
            row_kl, row_ov = [], []
            for l in range(len(hs)):
                h = hs[l][0, 1:]
                lg = (hf.lm_head(hf.model.norm(h)) if l < len(hs) - 1 else out.logits[0, 1:]).double()
                lp = lg.log_softmax(-1)
                row_kl.append((lp.exp() * (lp - lpf)).sum(-1))
                top, topf = lg.topk(k).indices, fin.topk(k).indices
                row_ov.append((top.unsqueeze(-1) == topf.unsqueeze(-2)).any(-1).double().mean(-1))
            kls.append(torch.stack(row_kl, 1)); ovs.append(torch.stack(row_ov, 1))
    kl, ov = torch.cat(kls).mean(0).numpy(), torch.cat(ovs).mean(0).numpy()
    got_kl = df.query("metric == 'kl_final'").sort_values("layer").value.to_numpy()
    got_ov = df.query("metric == 'topk_overlap'").sort_values("layer").value.to_numpy()
    np.testing.assert_allclose(got_kl, kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_ov, ov, atol=1e-9)
    assert got_kl[-1] < 1e-6 and got_ov[-1] == 1.0


def test_remote_local_same_numbers(tiny_llama):
    a = tiny_llama()
    b = tiny_llama(remote="local")
    np.testing.assert_allclose(contributions(a, TEXTS[:2], progress=False).value,
                               contributions(b, TEXTS[:2], progress=False).value, rtol=1e-6)
    np.testing.assert_allclose(logit_lens_depth(a, TEXTS[:2], progress=False).value,
                               logit_lens_depth(b, TEXTS[:2], progress=False).value, rtol=1e-6)


def test_gsm8k_texts(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")          # no hub, no hub cache: only the data folder counts
    t = gsm8k_texts(n=5)                                   # from $DEPTHSTUDY_DATA (set by conftest)
    assert len(t) == 5 and all(x.startswith("Question: ") and "\nAnswer: " in x for x in t)
    assert "<<" not in "".join(t) and "####" in t[0]
    assert gsm8k_texts(n=1, start=1)[0] == t[1]
    with pytest.raises(FileNotFoundError, match="DEPTHSTUDY_DATA"):
        gsm8k_texts(path="/nonexistent/test.jsonl")
    assert gsm8k_texts(n=2, data_dir=data_dir) == t[:2]
    assert gsm8k_texts(data_dir / "gsm8k" / "test.jsonl", n=2) == t[:2]
    monkeypatch.delenv("DEPTHSTUDY_DATA")                  # no data folder anywhere: say what to set
    with pytest.raises(FileNotFoundError, match="test.jsonl.*DEPTHSTUDY_DATA"):
        gsm8k_texts(n=1)
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        gsm8k_texts(n=1, data_dir=tmp_path)


def test_default_texts_without_any_data(tiny, data_dir, monkeypatch, tmp_path):
    "texts=None: GSM8K where found, else generated word problems; a fresh clone without data must still run."
    import json
    from depthstudy.tasks import corpus_texts, word_problems
    monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")
    (tmp_path / "gsm8k").mkdir()                           # a short GSM8K copy (the tiny model reads 512 bytes at most)
    (tmp_path / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(dict(question=f"What is {i} + 1?", answer=f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}")) + "\n" for i in range(30)))
    monkeypatch.setenv("DEPTHSTUDY_DATA", str(tmp_path))
    df = contributions(tiny, batch_size=10, n_boot=10, progress=False)
    assert set(df.task) == {"gsm8k"}
    np.testing.assert_allclose(df.value, contributions(tiny, gsm8k_texts(n=20), batch_size=10, n_boot=10, progress=False).value)
    monkeypatch.setenv("DEPTHSTUDY_DATA", str(tmp_path / "gsm8k" / "nothing"))   # no data folder with GSM8K and no hub
    assert corpus_texts(20).texts == word_problems(20)
    df = contributions(tiny, batch_size=10, n_boot=10, progress=False)
    ref = contributions(tiny, word_problems(20), batch_size=10, n_boot=10, progress=False)
    assert set(df.task) == {"word-problems"} and set(ref.task) == {"gsm8k"}     # a label given by the caller's texts
    np.testing.assert_allclose(df.value, ref.value)
    lens = logit_lens_depth(tiny, batch_size=10, n_boot=10, progress=False)
    assert set(lens.task) == {"word-problems"} and set(lens.layer) == set(range(tiny.n_layers + 1))
    assert set(contributions(tiny, ["some text here"], task="mine", n_boot=10, progress=False).task) == {"mine"}


def test_errors(tiny):
    with pytest.raises(ValueError): contributions(tiny, [], progress=False)
    with pytest.raises(ValueError): logit_lens_depth(tiny, ["abc"], k=0, progress=False)
