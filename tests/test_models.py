"load_model, the Arch table and the embedded model."
import os, time
import pytest
import torch
from depthstudy import models
from depthstudy.models import ARCHS, Arch, ModelNotFoundError, UnknownArchitectureError, find_arch, load_model, tiny_model
from depthstudy.ndif import NDIFKeyError
from depthstudy.trace import collect


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_arch_finds_every_part(family):
    m = tiny_model(family)
    assert m.arch is ARCHS[family]
    hf = m.hf
    for path in (m.arch.embed, m.arch.blocks, m.arch.norm, m.arch.head):
        mod = models.submodule(hf, path)
        assert isinstance(mod, torch.nn.Module), (family, path)
    assert len(m.blocks) == m.n_layers == 3
    for b in models.submodule(hf, m.arch.blocks):
        assert isinstance(models.submodule(b, m.arch.attn), torch.nn.Module)
        assert isinstance(models.submodule(b, m.arch.mlp), torch.nn.Module)


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_residuals_match_hf_hidden_states_on_padded_batch(family):
    m = tiny_model(family)
    prompts = ["the cat sat on the mat", "a dog", "the capital of france is paris and the capital of italy is rome"]
    acts = collect(m, prompts, positions="all", cache=False, progress=False, batch_size=3)
    enc = m.encode(prompts)
    assert enc["attention_mask"].sum(1).tolist() == acts.lengths.tolist()
    with torch.no_grad():
        hs = m.hf(**enc, output_hidden_states=True).hidden_states
    final_norm = models.submodule(m.hf, m.arch.norm)
    for i, n in enumerate(acts.lengths.tolist()):
        for l in range(m.n_layers):
            torch.testing.assert_close(acts.resid[i, l, :n], hs[l][i, :n], atol=1e-5, rtol=0)
        # HF's last hidden state has the final norm applied; ours is taken before it
        with torch.no_grad():
            torch.testing.assert_close(final_norm(acts.resid[i, m.n_layers, :n]), hs[m.n_layers][i, :n], atol=1e-5, rtol=0)
        assert not acts.mask[i, n:].any()
    # every block adds exactly its attention and MLP contributions
    torch.testing.assert_close(acts.resid[:, 1:], acts.resid[:, :-1] + acts.attn + acts.mlp, atol=1e-5, rtol=0)


def test_unknown_architecture_names_class_and_fix():
    class WeirdConfig:
        model_type = "weird"
    with pytest.raises(UnknownArchitectureError, match=r"WeirdConfig.*'weird'.*ARCHS\['weird'\] = Arch"):
        find_arch(WeirdConfig())


def test_unknown_model_says_what_to_do():
    t = time.time()
    with pytest.raises(ModelNotFoundError) as e:
        load_model("no/such-model")
    msg = str(e.value)
    assert "no/such-model" in msg and "depthstudy models" in msg and "local directory" in msg
    assert time.time() - t < 20  # fails fast offline instead of retrying the hub


def test_not_a_hub_id_nor_dir(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not an embedded model name"):
        load_model("gpt-17")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_remote_without_key_fails_before_any_request(monkeypatch):
    from nnsight import CONFIG
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    def no_request(*a, **k):
        raise AssertionError("a request was attempted")
    monkeypatch.setattr("nnsight.LanguageModel.__init__", no_request)
    with pytest.raises(NDIFKeyError, match="NDIF_API_KEY"):
        load_model("meta-llama/Llama-3.1-70B", remote=True)


def test_embedded_second_load_reads_cache(embedded, monkeypatch):
    assert (models.embedded_path("smollm2-135m") / "model.safetensors").exists()
    def no_gguf(*a):
        raise AssertionError("the GGUF was dequantised again")
    monkeypatch.setattr(models, "_embedded_gguf", no_gguf)
    m2 = load_model("smollm2-135m")
    assert m2.fingerprint == embedded.fingerprint
    assert (m2.n_layers, m2.d_model, m2.arch.family) == (30, 576, "Llama")


def test_fingerprint_tracks_weights():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    assert a.fingerprint == b.fingerprint
    with torch.no_grad():
        b.hf.model.layers[1].mlp.down_proj.weight[3, 5] += 1.0
    assert models.weights_fingerprint(b.hf) != a.fingerprint


def test_list_models_embedded_first(embedded):
    ms = models.list_models()
    assert [m["name"] for m in ms[:len(models.EMBEDDED)]] == list(models.EMBEDDED)
    assert ms[0]["cached"] and ms[0]["installed"]


def test_explicit_device_map_with_offload(tmp_path, byte_tokenizer, tiny_llama):
    """An explicit device_map that offloads layers (accelerate hooks, weights on the meta device, as device_map=
    "auto" does when GPUs run out) gives the same activations and skip effects as a plain load, float32 on the
    CPU; the fingerprint reads the offloaded weights, so two models differing only there never share a cache entry."""
    import numpy as np
    from depthstudy.skip import skip_raw
    tiny_llama(n_layers=4).hf.save_pretrained(tmp_path / "a")
    byte_tokenizer().save_pretrained(tmp_path / "a")
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.layers.2": "disk",
          "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    plain = load_model(str(tmp_path / "a"), progress=False)
    off = load_model(str(tmp_path / "a"), device_map=dm, progress=False)
    assert any(p.device.type == "meta" for p in off.hf.parameters()), "nothing was offloaded: the test tests nothing"
    assert off.fingerprint == plain.fingerprint
    prompts = ["the cat sat on the mat", "two plus two"]
    a = collect(plain, prompts, positions="all", cache=False, progress=False)
    b = collect(off, prompts, positions="all", cache=False, progress=False)
    assert b.resid.dtype == torch.float32 and b.resid.device.type == "cpu"
    torch.testing.assert_close(b.resid, a.resid, atol=1e-5, rtol=0)
    for engine in ("direct", "nnsight"):
        s1 = skip_raw(plain, prompts, n_t=1, progress=False, engine=engine)
        s2 = skip_raw(off, prompts, n_t=1, progress=False, engine=engine)
        np.testing.assert_allclose(s2["eff_max"], s1["eff_max"], atol=1e-5)
    # one offloaded weight changed on disk: another model, another fingerprint
    other = tiny_llama(n_layers=4).hf
    with torch.no_grad(): other.model.layers[3].mlp.down_proj.weight[0, 0] += 1.0
    other.save_pretrained(tmp_path / "b"); byte_tokenizer().save_pretrained(tmp_path / "b")
    assert load_model(str(tmp_path / "b"), device_map=dm, progress=False).fingerprint != off.fingerprint


def _prepare_in_subprocess(cache, out):
    "Start `depthstudy trace` in a fresh process preparing the embedded model into `cache`; returns the Popen."
    import subprocess, sys
    env = dict(os.environ, DEPTHSTUDY_CACHE=str(cache))
    code = ("import sys; from depthstudy.models import load_model; from depthstudy.trace import collect; "
            "m = load_model(progress=False); a = collect(m, ['The capital of France is'], cache=False, progress=False); "
            "import torch; torch.save(a.resid, sys.argv[1])")
    return subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_prepare_one_empty_cache(tmp_path):
    """Two processes load the embedded model into one empty cache at the same time: both succeed, with identical
    activations, and the cache holds one complete, verified copy (no leftover build folders)."""
    cache = tmp_path / "cache"
    procs = [_prepare_in_subprocess(cache, tmp_path / f"r{k}.pt") for k in (1, 2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, o in zip(procs, outs): assert p.returncode == 0, o[-3000:]
    a, b = (torch.load(tmp_path / f"r{k}.pt") for k in (1, 2))
    assert torch.equal(a, b)
    target = cache / "models" / "smollm2-135m"
    assert models.verify_prepared(target) is None
    assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == ["smollm2-135m"]


def _flip(path, offset, n=4096):
    with open(path, "r+b") as f:
        f.seek(offset); data = f.read(n); f.seek(offset); f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.slow
def test_damaged_copy_is_rebuilt_and_never_served(tmp_path, monkeypatch):
    """A truncated and a byte-flipped copy of the embedded model are detected on load and rebuilt (with a warning);
    activations computed before the damage are served again, and none is ever computed from the damaged copy."""
    monkeypatch.setenv("DEPTHSTUDY_CACHE", str(tmp_path / "cache"))
    m = load_model(progress=False)
    prompts = ["The capital of France is", "Two plus two is"]
    good = collect(m, prompts, progress=False)                 # computed and cached under the good fingerprint
    weights = models.embedded_path("smollm2-135m") / "model.safetensors"
    size = weights.stat().st_size

    # 1. truncated: the size gives it away
    with open(weights, "r+b") as f: f.truncate(size // 2)
    assert "truncated" in models.verify_prepared(weights.parent)
    with pytest.warns(UserWarning, match="cannot be used.*rebuilding"):
        m2 = load_model(progress=False)
    assert weights.stat().st_size == size and models.verify_prepared(weights.parent) is None

    # 2. 4 KB flipped in the middle of the weights: same size, the checksum gives it away
    _flip(weights, size // 2)
    assert "checksum" in models.verify_prepared(weights.parent)
    with pytest.warns(UserWarning, match="cannot be used.*rebuilding"):
        m3 = load_model(progress=False)
    assert models.verify_prepared(weights.parent) is None
    assert m3.fingerprint == m2.fingerprint == m.fingerprint
    fresh = collect(m3, prompts, cache=False, progress=False)  # computed from the rebuilt copy
    torch.testing.assert_close(fresh.resid, good.resid, atol=0, rtol=0)
    served = collect(m3, prompts, progress=False)               # from the activation cache
    torch.testing.assert_close(served.resid, good.resid, atol=0, rtol=0)
    # an unchanged copy is not hashed again: its size, times and inode match the last check
    calls = []
    monkeypatch.setattr(models, "_sha256", lambda p: calls.append(p) or "x")
    assert models.verify_prepared(weights.parent) is None and calls == []
