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
