"What a remote run costs: the plan (from each analysis's own Work) against the requests nnsight's simulation sends."
import pytest
from nnsight.intervention.backends.local import LocalSimulationBackend
from depthstudy import cost as C, executor as X
from depthstudy.models import tiny_model, model_shape
from depthstudy.trace import collect

PROMPTS = [f"the cat sat on the mat {' '.join(['one'] * k)}" for k in range(12)]


@pytest.fixture
def backend_calls(monkeypatch):
    "Count requests at nnsight's request backend."
    state = {"calls": 0}
    orig = LocalSimulationBackend.__call__
    def call(self, tracer):
        state["calls"] += 1
        return orig(self, tracer)
    monkeypatch.setattr(LocalSimulationBackend, "__call__", call)
    return state


TEXTS = [f"the cat sat on the mat and the dog ran {' '.join(['to the mat'] * k)}" for k in range(5)]


def _items():
    from depthstudy.items import MCItem
    sums = [("one", "one", 0), ("one", "two", 1), ("two", "two", 2), ("two", "one", 1), ("three", "one", 2)]
    return [MCItem(f"what is {a} plus {b}", ["two", "three", "four"], [k], "calc") for a, b, k in sums]


def test_estimate_cost_counts_the_requests_a_simulated_run_sends(backend_calls, tiny_llama, monkeypatch):
    """Every analysis, planned by `estimate_cost` from its own Work and run under remote="local" with the same request
    budget: the planned requests are the requests sent, and the payload is of the planned size."""
    from depthstudy.mc import mc_scores
    from depthstudy.residual import contributions
    from depthstudy.lens import logit_lens_depth
    from depthstudy.skip import skip_effects
    from depthstudy.hierarchy import hierarchy
    from depthstudy.probes import probe_mc
    m = tiny_llama(n_layers=3, hidden=32, remote="local")
    rt = 2 * int(m.encode(PROMPTS[:2])["input_ids"].numel())            # about two small batches a request
    monkeypatch.setitem(X.DEFAULTS, "request_tokens", rt)
    runs = [  # (plan entry, the same analysis run under remote="local")
        (dict(analysis="collect", prompts=PROMPTS, batch_size=2, sites=("resid",)),
         lambda: collect(m, PROMPTS, sites=("resid",), batch_size=2, cache=False, progress=False)),
        (dict(analysis="lens_mc", items=_items(), batch_size=2),
         lambda: mc_scores(m, _items(), batch_size=2, cache=False, progress=False)),
        (dict(analysis="probe_mc", items=_items(), batch_size=2),
         lambda: probe_mc(m, _items(), batch_size=2, cv=2, cache=False, progress=False)),
        (dict(analysis="hierarchy", level="items", n=20, batch_size=4),
         lambda: hierarchy(m, "items", n=20, batch_size=4, n_perm=0, cv=2, labels=["living"], cache=False, progress=False)),
        (dict(analysis="contributions", texts=TEXTS, batch_size=2),
         lambda: contributions(m, TEXTS, batch_size=2, n_boot=10, cache=False, progress=False)),
        (dict(analysis="logit_lens_depth", texts=TEXTS, batch_size=2),
         lambda: logit_lens_depth(m, TEXTS, batch_size=2, n_boot=10, cache=False, progress=False)),
        (dict(analysis="skip_effects", texts=TEXTS, n_t=2, batch_size=5),
         lambda: skip_effects(m, TEXTS, n_t=2, batch_size=5, n_boot=10, cache=False, progress=False)),
    ]
    est = C.estimate_cost([p for p, _ in runs], m, request_tokens=rt, request_kb=10)   # a tiny model's requests carry ~10 kB of code
    assert list(est.analysis) == [p["analysis"] for p, _ in runs] + ["total"]
    measured = []
    for (plan, run), row in zip(runs, est.itertuples()):
        backend_calls["calls"] = 0
        with X.request_meter() as rm:
            run()
        assert rm.requests == backend_calls["calls"], plan["analysis"]        # the meter sees every request
        assert row.requests == backend_calls["calls"], (plan["analysis"], row.requests, backend_calls["calls"])
        measured.append(rm.upload_bytes)
        assert row.requests > 1, plan["analysis"]                           # each plan really splits the work
    up = est.upload_mb.iloc[:-1].to_numpy() * 1e6
    assert all(0.2 < u / m_ < 5 for u, m_ in zip(up, measured)), (up, measured)   # payload size: right order
    tot = est.iloc[-1]
    assert tot.requests == est.requests.iloc[:-1].sum() and tot.time_s > tot.overhead_s > 0
    assert est.attrs["assumptions"]["n_layers"] == m.n_layers


def test_estimate_cost_scales_with_the_target_and_checks_its_input():
    m = tiny_model("llama")
    plan = [dict(analysis="contributions", texts=TEXTS, batch_size=2), dict(analysis="skip_effects", texts=TEXTS, n_t=1)]
    small = C.estimate_cost(plan, "meta-llama/Llama-3.1-8B", tokenizer=m.tokenizer)
    big = C.estimate_cost(plan, "meta-llama/Llama-3.1-405B", tokenizer=m.tokenizer)
    assert small.traces.iloc[0] == big.traces.iloc[0] == 3                           # batches do not depend on size
    assert big.traces.iloc[1] > small.traces.iloc[1]                                # one skipped copy per layer
    assert (big.download_mb > small.download_mb).all() and (big.compute_s > small.compute_s).all()
    step = C.estimate_cost([dict(analysis="skip_effects", texts=TEXTS, n_t=1, layers_step=4)], "meta-llama/Llama-3.1-405B",
                           tokenizer=m.tokenizer)
    assert step.tokens.iloc[0] < big.tokens.iloc[1] / 3
    slow = C.estimate_cost(plan, "meta-llama/Llama-3.1-8B", tokenizer=m.tokenizer, overhead_s=60.0)
    assert slow.time_s.iloc[-1] > small.time_s.iloc[-1] and slow.attrs["assumptions"]["overhead_s"] == 60.0
    with pytest.raises(ValueError, match="analysis must be one of"):
        C.estimate_cost([dict(analysis="maps", texts=TEXTS)], m)
    with pytest.raises(TypeError, match="unknown assumption"):
        C.estimate_cost(plan, m, bandwidth=3)
    with pytest.raises(ValueError, match="pass tokenizer"):
        C.estimate_cost(plan, "meta-llama/Llama-3.1-8B")
    with pytest.raises(ValueError, match="no shape known"):
        model_shape("org/unknown-model")


def test_request_meter_restores_serialize():
    from nnsight.schema.request import RequestModel
    before = RequestModel.__dict__["serialize"]
    with pytest.raises(RuntimeError):
        with X.request_meter():
            raise RuntimeError("boom")
    assert RequestModel.__dict__["serialize"] is before


