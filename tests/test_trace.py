"collect(): positions, padding, the activation cache, and the NDIF simulation."
import pytest
import torch
from depthstudy.store import ActivationCache
from depthstudy.models import tiny_model
from depthstudy.trace import collect, resolve_positions


def count_forwards(model):
    n = {"calls": 0}
    h = model.hf.register_forward_pre_hook(lambda *a: n.__setitem__("calls", n["calls"] + 1))
    return n, h


def test_last_position_is_each_prompts_real_last_token():
    m = tiny_model("llama")
    prompts = ["the cat", "the capital of france is paris"]
    last = collect(m, prompts, positions="last", cache=False, progress=False)
    full = collect(m, prompts, positions="all", cache=False, progress=False)
    for i, n in enumerate(full.lengths.tolist()):
        torch.testing.assert_close(last.resid[i, :, 0], full.resid[i, :, n - 1])
    assert last.positions[:, 0].tolist() == [1, 5]


def test_explicit_positions_and_batch_size_do_not_change_results():
    m = tiny_model("qwen2")
    prompts = ["the cat sat", "a dog ran on the mat", "one two three four five"]
    a = collect(m, prompts, positions=[0, -1], batch_size=1, cache=False, progress=False)
    b = collect(m, prompts, positions=[0, -1], batch_size=3, cache=False, progress=False)
    torch.testing.assert_close(a.resid, b.resid, atol=1e-5, rtol=0)
    assert a.resid.shape == (3, m.n_layers + 1, 2, m.d_model) and a.attn.shape == (3, m.n_layers, 2, m.d_model)


def test_bad_arguments_are_refused():
    m = tiny_model("llama")
    with pytest.raises(ValueError, match="out of range"):
        collect(m, ["the cat"], positions=[5], cache=False, progress=False)
    with pytest.raises(ValueError, match="unknown site"):
        collect(m, ["the cat"], sites=("resid", "ffn"), cache=False, progress=False)
    with pytest.raises(ValueError, match="at least one prompt"):
        collect(m, [], cache=False, progress=False)
    assert resolve_positions([[0], [1, 2]], [2, 3]) == [[0], [1, 2]]


def test_second_identical_collection_runs_no_forward_pass(tmp_path):
    m = tiny_model("llama")
    cache = ActivationCache(tmp_path)
    n, h = count_forwards(m)
    prompts = ["the cat sat", "a dog", "the capital of france is"]
    a = collect(m, prompts, cache=cache, batch_size=2, progress=False, logits=True)
    assert n["calls"] == 2
    b = collect(m, prompts, cache=cache, batch_size=2, progress=False, logits=True)
    assert n["calls"] == 2, "the second identical call must be served from the cache"
    assert torch.equal(a.resid, b.resid) and torch.equal(a.logits, b.logits)
    # a partly cached call (resumed run) computes only what is missing
    collect(m, prompts + ["one two three"], cache=cache, batch_size=2, progress=False, logits=True)
    assert n["calls"] == 3
    h.remove()


def test_truncated_cache_entry_is_recomputed(tmp_path):
    m = tiny_model("llama")
    cache = ActivationCache(tmp_path)
    a = collect(m, ["the cat sat"], cache=cache, progress=False)
    files = list(tmp_path.glob("*/*.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])
    n, h = count_forwards(m)
    with pytest.warns(UserWarning, match="dropping unreadable entry"):
        b = collect(m, ["the cat sat"], cache=cache, progress=False)
    assert n["calls"] == 1 and torch.equal(a.resid, b.resid)
    h.remove()


def test_cache_distinguishes_models_with_the_same_name(tmp_path):
    cache = ActivationCache(tmp_path)
    a = collect(tiny_model("llama", seed=0), ["the cat"], cache=cache, progress=False)
    b = collect(tiny_model("llama", seed=1), ["the cat"], cache=cache, progress=False)
    assert not torch.allclose(a.resid[:, 1:], b.resid[:, 1:])


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_remote_local_simulation_gives_the_same_numbers(family):
    m = tiny_model(family)
    prompts = ["the cat sat on the mat", "a dog"]
    local = collect(m, prompts, positions="all", cache=False, progress=False, logits=True)
    sim = collect(m, prompts, positions="all", cache=False, progress=False, logits=True, remote="local")
    for k in ("resid", "attn", "mlp", "logits"):
        torch.testing.assert_close(getattr(sim, k), getattr(local, k), atol=1e-6, rtol=0)


def test_embedded_model_remote_local_matches(embedded, tmp_path):
    prompts = ["The capital of France is", "One, two, three,"]
    local = collect(embedded, prompts, cache=False, progress=False)
    sim = collect(embedded, prompts, cache=False, progress=False, remote="local")
    torch.testing.assert_close(sim.resid, local.resid, atol=1e-5, rtol=0)


@pytest.mark.parametrize("remote", [None, "local"])
def test_output_head_runs_only_when_logits_are_asked_for(remote):
    m = tiny_model("llama")
    calls = {"n": 0}
    h = m.hf.lm_head.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    collect(m, ["the cat sat"], cache=False, progress=False, remote=remote)
    assert calls["n"] == 0, "collect without logits stops before the output head"
    acts = collect(m, ["the cat sat"], cache=False, progress=False, remote=remote, logits=True)
    assert calls["n"] == 1 and acts.logits.shape == (1, 1, m.vocab_size)
    h.remove()
