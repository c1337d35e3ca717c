"The remote path: requests per analysis, retries, clear failures, resuming, and the key never written."
import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from depthstudy import remote as R
from depthstudy.cache import ActivationCache
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
    monkeypatch.setattr(R.time, "sleep", lambda s: None)  # no real waiting in tests
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
    with pytest.warns(UserWarning), pytest.raises(R.RemoteRunError) as e:
        collect(m, PROMPTS[:3], cache=False, progress=False, remote="local")
    msg = str(e.value)
    assert "after 3 retries" in msg and "resumes" in msg and "depthstudy doctor" in msg
    assert backend_calls["calls"] == 4


def test_non_transient_failure_is_not_retried(backend_calls):
    m = tiny_model("llama")
    backend_calls["fail"] = [RuntimeError("model not found on server")]
    with pytest.raises(R.RemoteRunError, match="model not found"):
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
    with pytest.raises(R.RemoteRunError):
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
    R._checked.clear()
    monkeypatch.setattr(ndif, "status", lambda raw=False: (_ for _ in ()).throw(ConnectionError("no route")))
    with pytest.raises(R.RemoteRunError, match="Cannot reach NDIF"):
        R.preflight("meta-llama/Llama-3.1-8B")
    dep = {"a": {"repo_id": "meta-llama/Llama-3.1-8B", "application_state": "RUNNING"}}
    monkeypatch.setattr(ndif, "status", lambda raw=False: {"deployments": dep})
    with pytest.raises(R.RemoteRunError, match="does not host 'org/unhosted'.*Llama-3.1-8B"):
        R.preflight("org/unhosted")
    class Cmp: critical_mismatches = {"nnsight": {"local": "0.8.1", "remote": "0.9.0"}}
    monkeypatch.setattr(ndif, "compare", lambda: Cmp())
    with pytest.raises(R.RemoteRunError, match="nnsight==0.9.0"):
        R.preflight("meta-llama/Llama-3.1-8B")
    monkeypatch.setattr(ndif, "compare", lambda: type("C", (), {"critical_mismatches": {}})())
    R.preflight("meta-llama/Llama-3.1-8B")  # all good: no error


def test_doctor_never_reveals_the_key(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "MARKER-KEY-1234567890")
    rep = R.doctor(check_ndif=False)
    assert rep["ndif_key_set"] is True and "MARKER-KEY" not in repr(rep)


# --- what a run costs: the plan against nnsight's simulation, and hierarchy under remote="local" ---

TEXTS = [f"the cat sat on the mat and the dog ran {' '.join(['to the mat'] * k)}" for k in range(5)]


def _items():
    from depthstudy.tasks import MCItem
    sums = [("one", "one", 0), ("one", "two", 1), ("two", "two", 2), ("two", "one", 1), ("three", "one", 2)]
    return [MCItem(f"what is {a} plus {b}", ["two", "three", "four"], [k], "calc") for a, b, k in sums]


def test_estimate_cost_counts_the_requests_a_simulated_run_sends(backend_calls, tiny_llama):
    from depthstudy.lens import mc_scores
    from depthstudy.residual import contributions, logit_lens_depth
    from depthstudy.skip import skip_effects
    from depthstudy.probes import hierarchy
    m = tiny_llama(n_layers=3, hidden=32, remote="local")
    n_tok = int(m.encode(PROMPTS[:2])["input_ids"].numel())
    runs = [  # (plan entry, the same analysis run under remote="local")
        (dict(analysis="collect", prompts=PROMPTS, batch_size=2, sites=("resid",), request_tokens=2 * n_tok),
         lambda: collect(m, PROMPTS, sites=("resid",), batch_size=2, cache=False, progress=False,
                         request=dict(request_tokens=2 * n_tok))),
        (dict(analysis="lens_mc", items=_items(), batch_size=2),
         lambda: mc_scores(m, _items(), batch_size=2, progress=False)),
        (dict(analysis="hierarchy", level="items", n=20, batch_size=4),
         lambda: hierarchy(m, "items", n=20, batch_size=4, n_perm=0, cv=2, labels=["living"], cache=False, progress=False)),
        (dict(analysis="contributions", texts=TEXTS, batch_size=2),
         lambda: contributions(m, TEXTS, batch_size=2, n_boot=10, progress=False)),
        (dict(analysis="logit_lens_depth", texts=TEXTS, batch_size=2),
         lambda: logit_lens_depth(m, TEXTS, batch_size=2, n_boot=10, progress=False)),
        (dict(analysis="skip_effects", texts=TEXTS, n_t=2, batch_size=5),
         lambda: skip_effects(m, TEXTS, n_t=2, batch_size=5, n_boot=10, progress=False)),
    ]
    est = R.estimate_cost([p for p, _ in runs], m, request_kb=10)   # a tiny model's requests carry ~10 kB of code
    assert list(est.analysis) == ["collect", "lens_mc", "hierarchy", "contributions", "logit_lens_depth", "skip_effects", "total"]
    measured = []
    for (plan, run), row in zip(runs, est.itertuples()):
        backend_calls["calls"] = 0
        with R.request_meter() as rm:
            run()
        assert rm.requests == backend_calls["calls"], plan["analysis"]        # the meter sees every request
        assert row.requests == backend_calls["calls"], (plan["analysis"], row.requests, backend_calls["calls"])
        measured.append(rm.upload_bytes)
        assert 1 < row.requests or plan["analysis"] == "hierarchy"              # each plan really splits the work
    up = est.upload_mb.iloc[:-1].to_numpy() * 1e6
    assert all(0.3 < u / m_ < 3 for u, m_ in zip(up, measured)), (up, measured)   # payload size: right order
    tot = est.iloc[-1]
    assert tot.requests == est.requests.iloc[:-1].sum() and tot.time_s > tot.overhead_s > 0
    assert est.attrs["assumptions"]["n_layers"] == m.n_layers


def test_estimate_cost_scales_with_the_target_and_checks_its_input():
    m = tiny_model("llama")
    plan = [dict(analysis="contributions", texts=TEXTS, batch_size=2), dict(analysis="skip_effects", texts=TEXTS, n_t=1)]
    small = R.estimate_cost(plan, "meta-llama/Llama-3.1-8B", tokenizer=m.tokenizer)
    big = R.estimate_cost(plan, "meta-llama/Llama-3.1-405B", tokenizer=m.tokenizer)
    assert small.requests.iloc[0] == big.requests.iloc[0] == 3                       # batches do not depend on size
    assert big.requests.iloc[1] > small.requests.iloc[1]                            # one skipped copy per layer
    assert (big.download_mb > small.download_mb).all() and (big.compute_s > small.compute_s).all()
    step = R.estimate_cost([dict(analysis="skip_effects", texts=TEXTS, n_t=1, layers_step=4)], "meta-llama/Llama-3.1-405B",
                           tokenizer=m.tokenizer)
    assert step.tokens.iloc[0] < big.tokens.iloc[1] / 3
    slow = R.estimate_cost(plan, "meta-llama/Llama-3.1-8B", tokenizer=m.tokenizer, overhead_s=60.0)
    assert slow.time_s.iloc[-1] > small.time_s.iloc[-1] and slow.attrs["assumptions"]["overhead_s"] == 60.0
    with pytest.raises(ValueError, match="analysis must be one of"):
        R.estimate_cost([dict(analysis="maps", texts=TEXTS)], m)
    with pytest.raises(TypeError, match="unknown assumption"):
        R.estimate_cost(plan, m, bandwidth=3)
    with pytest.raises(ValueError, match="pass tokenizer"):
        R.estimate_cost(plan, "meta-llama/Llama-3.1-8B")
    with pytest.raises(ValueError, match="no shape known"):
        R.model_shape("org/unknown-model")


def test_request_meter_restores_serialize():
    from nnsight.schema.request import RequestModel
    before = RequestModel.__dict__["serialize"]
    with pytest.raises(RuntimeError):
        with R.request_meter():
            raise RuntimeError("boom")
    assert RequestModel.__dict__["serialize"] is before


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_hierarchy_remote_local_gives_the_same_numbers(readout, tiny_llama):
    "Study 3's decoding collects its activations through the same executor: same numbers under the simulation."
    import pandas as pd
    from depthstudy.probes import hierarchy
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
    from depthstudy.lens import mc_scores
    from depthstudy.maps import linear_maps
    from depthstudy.probes import hierarchy, probe_mc
    from depthstudy.residual import contributions, logit_lens_depth
    from depthstudy.skip import skip_raw
    from depthstudy.tasks import load_task
    sim = load_model("smollm2-135m", remote="local", progress=False)
    texts = ["Natalia sold clips to 48 of her friends in April.", "The capital of France is Paris, and of Spain"]
    items = load_task("facts", n=6, seed=0)
    same = lambda a, b, **tol: pd.testing.assert_series_equal(a.value.reset_index(drop=True), b.value.reset_index(drop=True), **tol)
    n0 = backend_calls["calls"]
    same(contributions(embedded, texts, progress=False), contributions(sim, texts, progress=False), rtol=1e-5)
    same(logit_lens_depth(embedded, texts, progress=False), logit_lens_depth(sim, texts, progress=False), rtol=1e-5, atol=1e-6)
    x = skip_raw(embedded, texts[:1], n_t=1, layers=[0, 10, 29], progress=False, engine="nnsight")
    y = skip_raw(sim, texts[:1], n_t=1, layers=[0, 10, 29], progress=False)
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
