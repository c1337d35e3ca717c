"""The executor, the one way into a model: requests per analysis, retries, splitting, clear failures, resuming after an
interruption for every analysis, NDIF's preflight, and the key never written."""
import numpy as np
import pandas as pd
import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from depthstudy import executor as X, ndif as N
from depthstudy.store import ActivationCache
from depthstudy.models import tiny_model
from depthstudy.trace import collect


@pytest.fixture
def backend_calls(monkeypatch):
    "Count (and optionally fail) requests at nnsight's request backend."
    state = {"calls": 0, "fail": []}
    orig = LocalSimulationBackend.__call__
    def call(self, tracer):
        state["calls"] += 1
        if state["fail"]:
            raise state["fail"].pop(0)
        return orig(self, tracer)
    monkeypatch.setattr(LocalSimulationBackend, "__call__", call)
    monkeypatch.setattr(X.time, "sleep", lambda s: None)  # no real waiting in tests
    return state


PROMPTS = [f"the cat sat on the mat {' '.join(['one'] * k)}" for k in range(12)]


def test_requests_are_bounded_and_results_match(backend_calls):
    m = tiny_model("llama")
    local = collect(m, PROMPTS, batch_size=2, cache=False, progress=False)
    sim = collect(m, PROMPTS, batch_size=2, cache=False, progress=False, remote="local")
    assert backend_calls["calls"] == 1, "6 batches fit one request by default"
    torch.testing.assert_close(sim.resid, local.resid, atol=1e-6, rtol=0)
    backend_calls["calls"] = 0
    n_tok = max(int(m.encode(PROMPTS[i:i + 2])["input_ids"].numel()) for i in range(0, 12, 2))
    collect(m, PROMPTS, batch_size=2, cache=False, progress=False, remote="local", request=dict(request_tokens=2 * n_tok))
    assert 3 <= backend_calls["calls"] <= 6  # a smaller budget splits the work, never beyond one request per batch


def test_transient_failure_is_retried(backend_calls):
    m = tiny_model("llama")
    backend_calls["fail"] = [ConnectionError("connection reset by peer"), TimeoutError("read timed out")]
    with pytest.warns(UserWarning, match="retry 1/3"):
        acts = collect(m, PROMPTS[:3], cache=False, progress=False, remote="local")
    assert backend_calls["calls"] == 3 and acts.resid.shape[0] == 3


def test_persistent_failure_is_reported_clearly(backend_calls):
    m = tiny_model("llama")
    backend_calls["fail"] = [ConnectionError("503 Service Unavailable")] * 4
    with pytest.warns(UserWarning), pytest.raises(N.RemoteRunError) as e:
        collect(m, PROMPTS[:3], cache=False, progress=False, remote="local")
    msg = str(e.value)
    assert "after 3 retries" in msg and "resumes" in msg and "depthstudy doctor" in msg
    assert backend_calls["calls"] == 4


def test_non_transient_failure_is_not_retried(backend_calls):
    m = tiny_model("llama")
    backend_calls["fail"] = [RuntimeError("model not found on server")]
    with pytest.raises(N.RemoteRunError, match="model not found"):
        collect(m, PROMPTS[:3], cache=False, progress=False, remote="local")
    assert backend_calls["calls"] == 1


def test_too_large_request_is_split(backend_calls):
    m = tiny_model("llama")
    backend_calls["fail"] = [RuntimeError("413 Payload Too Large")]
    acts = collect(m, PROMPTS, batch_size=2, cache=False, progress=False, remote="local")
    assert backend_calls["calls"] == 3  # refused, then two halves
    assert acts.resid.shape[0] == len(PROMPTS)


def test_rerun_after_interruption_skips_what_was_cached(backend_calls, tmp_path):
    m = tiny_model("llama")
    cache = ActivationCache(tmp_path)
    n_tok = int(m.encode(PROMPTS[:2])["input_ids"].numel())
    opts = dict(request_tokens=2 * n_tok, retries=0)
    # the third request fails for good: what came back before it is cached
    backend_calls["fail"] = []
    orig_call = LocalSimulationBackend.__call__
    with pytest.raises(N.RemoteRunError):
        calls = {"n": 0}
        def flaky(self, tracer):
            calls["n"] += 1
            if calls["n"] == 3: raise RuntimeError("server error: worker crashed")
            return orig_call(self, tracer)
        LocalSimulationBackend.__call__ = flaky
        try:
            collect(m, PROMPTS, batch_size=2, cache=cache, progress=False, remote="local", request=opts)
        finally:
            LocalSimulationBackend.__call__ = orig_call
    kept = cache.info()["entries"]
    assert 0 < kept < len(PROMPTS)
    backend_calls["calls"] = 0
    acts = collect(m, PROMPTS, batch_size=2, cache=cache, progress=False, remote="local", request=opts)
    full = collect(m, PROMPTS, batch_size=2, cache=False, progress=False)
    torch.testing.assert_close(acts.resid, full.resid, atol=1e-6, rtol=0)
    assert cache.info()["entries"] == len(PROMPTS)
    # the rerun sent only what was missing
    missing_batches = -(-(len(PROMPTS) - kept) // 2)
    assert backend_calls["calls"] <= missing_batches


def test_preflight_messages(monkeypatch):
    import nnsight.ndif as ndif
    N._checked.clear()
    monkeypatch.setattr(ndif, "status", lambda raw=False: (_ for _ in ()).throw(ConnectionError("no route")))
    with pytest.raises(N.RemoteRunError, match="Cannot reach NDIF"):
        N.preflight("meta-llama/Llama-3.1-8B")
    dep = {"a": {"repo_id": "meta-llama/Llama-3.1-8B", "application_state": "RUNNING"}}
    monkeypatch.setattr(ndif, "status", lambda raw=False: {"deployments": dep})
    with pytest.raises(N.RemoteRunError, match="does not host 'org/unhosted'.*Llama-3.1-8B"):
        N.preflight("org/unhosted")
    class Cmp: critical_mismatches = {"nnsight": {"local": "0.8.1", "remote": "0.9.0"}}
    monkeypatch.setattr(ndif, "compare", lambda: Cmp())
    with pytest.raises(N.RemoteRunError, match="nnsight==0.9.0"):
        N.preflight("meta-llama/Llama-3.1-8B")
    monkeypatch.setattr(ndif, "compare", lambda: type("C", (), {"critical_mismatches": {}})())
    N.preflight("meta-llama/Llama-3.1-8B")  # all good: no error


def test_doctor_never_reveals_the_key(monkeypatch):
    from depthstudy.cli import doctor
    monkeypatch.setenv("NDIF_API_KEY", "MARKER-KEY-1234567890")
    rep = doctor(check_ndif=False)
    assert rep["ndif_key_set"] is True and "MARKER-KEY" not in repr(rep)


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_hierarchy_remote_local_gives_the_same_numbers(readout, tiny_llama):
    "Study 3's decoding collects its activations through the same executor: same numbers under the simulation."
    import pandas as pd
    from depthstudy.hierarchy import hierarchy
    kw = dict(level="items", n=40, readout=readout, n_perm=1, cv=3, labels=["living", "log_size"], cache=False, progress=False)
    local = hierarchy(tiny_llama(n_layers=3, hidden=32), **kw)
    sim = hierarchy(tiny_llama(n_layers=3, hidden=32, remote="local"), **kw)
    cols = ["task", "layer", "metric", "value", "ci_low", "ci_high", "baseline"]
    pd.testing.assert_frame_equal(local[cols], sim[cols], atol=1e-6, rtol=0)


def test_every_analysis_on_the_embedded_model_under_remote_local(embedded, backend_calls):
    """Each analysis on the real embedded model, once locally and once through nnsight's simulation of an NDIF
    request: the same numbers, and requests were really sent (nothing came from the activation cache)."""
    import numpy as np
    import pandas as pd
    from depthstudy.models import load_model
    from depthstudy.mc import mc_scores
    from depthstudy.maps import linear_maps
    from depthstudy.probes import probe_mc
    from depthstudy.hierarchy import hierarchy
    from depthstudy.residual import contributions
    from depthstudy.lens import logit_lens_depth
    from depthstudy.skip import skip_raw
    from depthstudy.tasks import load_task
    sim = load_model("smollm2-135m", remote="local", progress=False)
    texts = ["Natalia sold clips to 48 of her friends in April.", "The capital of France is Paris, and of Spain"]
    items = load_task("facts", n=6, seed=0)
    same = lambda a, b, **tol: pd.testing.assert_series_equal(a.value.reset_index(drop=True), b.value.reset_index(drop=True), **tol)
    n0 = backend_calls["calls"]
    nc = dict(cache=False, progress=False)                      # computed both times: requests really sent
    same(contributions(embedded, texts, **nc), contributions(sim, texts, **nc), rtol=1e-5)
    same(logit_lens_depth(embedded, texts, **nc), logit_lens_depth(sim, texts, **nc), rtol=1e-5, atol=1e-6)
    x = skip_raw(embedded, texts[:1], n_t=1, layers=[0, 10, 29], engine="nnsight", **nc)
    y = skip_raw(sim, texts[:1], n_t=1, layers=[0, 10, 29], **nc)
    np.testing.assert_allclose(x["eff_max"], y["eff_max"], atol=1e-5)
    np.testing.assert_allclose(x["out_max"], y["out_max"], atol=1e-6)
    for a, b in zip(mc_scores(embedded, items, cache=False, progress=False), mc_scores(sim, items, cache=False, progress=False)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    same(probe_mc(embedded, items, cv=3, cache=False, progress=False),
         probe_mc(sim, items, cv=3, cache=False, progress=False), atol=1e-6)
    kw = dict(level="items", n=24, n_perm=0, cv=3, labels=["living"], layers=[0, 15, 30], cache=False, progress=False)
    same(hierarchy(embedded, **kw), hierarchy(sim, **kw), atol=1e-6)
    kw = dict(layers_a=[5, 20], layers_b=[5, 20], cache=False, progress=False)
    same(linear_maps(embedded, embedded, texts, **kw), linear_maps(sim, sim, texts, **kw), rtol=1e-4, atol=1e-6)
    assert backend_calls["calls"] - n0 >= 7, "the simulated runs sent fewer requests than analyses: something was cached"


# --- every analysis through the one executor: a fault is retried, an interruption resumes with only what is missing ---

HOP_TEXTS = ["the cat sat on the mat and the dog ran away", "one plus two equals three and four", "a b c d e f g h",
             "what is the capital of france it is paris"]


def _hop_items():
    from depthstudy.items import MCItem
    return [MCItem(f"q{k} the cat", [" sat", " ran", " is"], [0], f"toy-{1 + k % 2}", meta=dict(hops=1 + k % 2)) for k in range(4)]


def _mc_items():
    from depthstudy.items import MCItem
    return [MCItem(f"what is {a} plus {b}", ["two", "three", "four"], [k], "calc")
            for a, b, k in [("one", "one", 0), ("one", "two", 1), ("two", "two", 2), ("two", "one", 1)]]


def _analyses():
    "name -> (run(model, cache) -> numbers as a flat array, the model must be local)"
    from depthstudy.mc import mc_scores
    from depthstudy.probes import probe_mc
    from depthstudy.residual import contributions
    from depthstudy.lens import logit_lens_depth
    from depthstudy.skip import skip_raw, depth_vs_hops
    from depthstudy.maps import linear_maps
    from depthstudy.hierarchy import hierarchy
    flat = lambda xs: np.concatenate([np.asarray(x, float).ravel() for x in xs])
    pick = lambda raw: flat([raw["eff_max"], raw["out_sum"]])
    return {
        "collect": (lambda m, c: collect(m, PROMPTS[:6], batch_size=2, cache=c, progress=False).resid.numpy().ravel(), False),
        "mc_scores": (lambda m, c: flat(s.numpy() for s in mc_scores(m, _mc_items(), batch_size=1, cache=c, progress=False)), False),
        "probe_mc": (lambda m, c: probe_mc(m, _mc_items(), cv=2, batch_size=3, cache=c, progress=False).value.to_numpy(), False),
        "contributions": (lambda m, c: contributions(m, HOP_TEXTS, batch_size=1, n_boot=10, cache=c, progress=False).value.to_numpy(), False),
        "logit_lens_depth": (lambda m, c: logit_lens_depth(m, HOP_TEXTS, batch_size=1, n_boot=10, cache=c, progress=False).value.to_numpy(), False),
        "skip (nnsight)": (lambda m, c: pick(skip_raw(m, HOP_TEXTS, n_t=1, batch_size=4, engine="nnsight", cache=c, progress=False)), False),
        "skip (direct)": (lambda m, c: pick(skip_raw(m, HOP_TEXTS, n_t=1, batch_size=4, engine="direct", cache=c, progress=False)), True),
        "depth_vs_hops": (lambda m, c: depth_vs_hops(m, _hop_items(), batch_size=4, per_item=True, n_boot=10, cache=c,
                                                     progress=False).value.to_numpy(), False),
        "linear_maps": (lambda m, c: linear_maps(m, m, HOP_TEXTS, batch_size=1, layers_a=[1, 2], layers_b=[2, 3], cache=c,
                                                 progress=False).value.to_numpy(), False),
        "hierarchy": (lambda m, c: hierarchy(m, "items", n=12, batch_size=4, n_perm=0, cv=2, labels=["living"], cache=c,
                                             progress=False).value.to_numpy(), False),
    }


@pytest.mark.parametrize("name", list(_analyses()))
def test_every_analysis_retries_a_fault_and_resumes_after_an_interruption(name, tiny_llama, monkeypatch, tmp_path):
    """Under remote="local" (the direct skip engine: locally), every batch its own request: a transient failure of one
    request is retried and gives the same numbers; an interruption after one request keeps it, and the re-run sends
    only the requests that are missing (counted), with the same numbers."""
    run_it, local_only = _analyses()[name]
    monkeypatch.setitem(X.DEFAULTS, "request_tokens", 1)          # every batch is its own request
    monkeypatch.setitem(X.DEFAULTS, "backoff", 0.0)
    ref = run_it(tiny_llama(n_layers=3, hidden=32), False)
    m = tiny_llama(n_layers=3, hidden=32, remote=False if local_only else "local")
    real, calls = X._send, {"n": 0, "fail": {}}
    def send(*a):
        calls["n"] += 1
        if calls["n"] in calls["fail"]: raise calls["fail"][calls["n"]]
        return real(*a)
    monkeypatch.setattr(X, "_send", send)
    total = (calls.update(n=0) or run_it(m, ActivationCache(tmp_path / "full")), calls["n"])[1]
    assert total >= 2, f"{name}: the test needs at least two requests"
    if not local_only:                                            # (the direct engine runs locally: nothing to retry)
        calls.update(n=0, fail={1: TimeoutError("read timed out")})
        with pytest.warns(UserWarning, match="retry 1/3"):
            got = run_it(m, False)
        assert calls["n"] == total + 1
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)
    store = ActivationCache(tmp_path / "resume")
    calls.update(n=0, fail={2: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        run_it(m, store)
    calls.update(n=0, fail={})
    got = run_it(m, store)
    assert calls["n"] == total - 1, (name, calls["n"], total)      # the first request was kept
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)

