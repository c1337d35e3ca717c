"Localising a curve with uncertainty (depthstudy.results.localise): planted onsets, a null, power, Holm."
import numpy as np
import pytest
from scipy import stats
from depthstudy.results import localise, holm, detectable_effect


def planted(n, L, k, chance, p_after, seed):
    "Items correct with probability `chance` before layer k and `p_after` from layer k on (independent draws)."
    rng = np.random.default_rng(seed)
    return (rng.random((n, L)) < np.where(np.arange(L) >= k, p_after, chance)).astype(int)


@pytest.mark.parametrize("k", [1, 6, 12, 20])
def test_first_above_chance_interval_covers_a_planted_onset(k):
    for seed in range(5):
        loc = localise(planted(40, 25, k, 0.25, 0.9, seed), 0.25, n_boot=300, seed=seed).set_index("metric")
        first = loc.loc["first_above_chance"]
        assert first.value == k, (seed, first.value)
        assert first.ci_low <= k <= first.ci_high, (seed, first.ci_low, first.ci_high)
        half = loc.loc["half_way"]
        assert half.ci_low <= k <= half.ci_high
        best = loc.loc["best_layer"]
        assert k <= best.value and best.ci_low >= k - 1          # the best layer lies on the plateau
        above = loc.loc["mean"].above_chance.to_numpy()
        assert above[k:].all() and not above[:k].any()


def test_null_calls_no_layer_in_95_percent_of_runs():
    "Pure chance at 25 layers of 40 items: Holm keeps the family-wise error (any layer called) under 5%."
    called = []
    for seed in range(2000):
        V = (np.random.default_rng(seed).random((40, 25)) < 0.25).astype(int)
        loc = localise(V, 0.25, n_boot=0)
        called.append(loc.above_chance.to_numpy()[:25].astype(bool).any())
    rate = np.mean(called)
    assert rate <= 0.05, rate
    # the same tests without the correction call some layer in about half the runs: the correction is what keeps this low
    raw = [(np.random.default_rng(s).random((40, 25)) < 0.25).sum(0) for s in range(200)]
    k = np.arange(41); kstar = k[stats.binom.sf(k - 1, 40, 0.25) <= 0.05][0]
    assert np.mean([(c >= kstar).any() for c in raw]) > 0.3     # about half (discrete tests stay below 5% each)


def test_detectable_effect_shrinks_with_items_and_matches_its_power():
    eff = [detectable_effect(n, 0.25, n_tests=25) for n in (10, 20, 40, 80, 160, 320)]
    assert all(a > b for a, b in zip(eff, eff[1:])), eff
    assert np.isnan(detectable_effect(3, 0.25, n_tests=25))     # 3 items cannot pass a 0.002 test at all
    # simulate the corrected first step at chance + effect: detected about 80% of the time
    rng = np.random.default_rng(0)
    n, p1 = 40, 0.25 + eff[2]
    k = np.arange(n + 1); kstar = k[stats.binom.sf(k - 1, n, 0.25) <= 0.05 / 25][0]
    assert abs(np.mean(rng.binomial(n, p1, 20000) >= kstar) - 0.8) < 0.02
    # localise reports it, and more items give a smaller one
    small = localise(planted(20, 10, 5, .25, .9, 0), .25, n_boot=0).set_index("metric").loc["min_effect", "value"]
    large = localise(planted(80, 10, 5, .25, .9, 0), .25, n_boot=0).set_index("metric").loc["min_effect", "value"]
    assert small > large > 0
    t_small = detectable_effect(10, test="t", sd=0.1, n_tests=5)
    assert t_small > detectable_effect(40, test="t", sd=0.1, n_tests=5) > 0


def test_holm_matches_the_textbook_and_continuous_scores():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # textbook: sorted .005 .01 .03 .04 times 4 3 2 1 -> .02 .03 .06 .04, running max -> .02 .03 .06 .06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.stack([p, p[::-1]])), np.stack([holm(p), holm(p[::-1])]))
    rng = np.random.default_rng(3)
    folds = rng.normal(0.5, 0.04, (8, 10)) + np.where(np.arange(10) >= 4, 0.15, 0)
    loc = localise(folds, 0.5, n_boot=200)
    assert (loc.test == "t").all()
    assert loc.set_index("metric").loc["first_above_chance", "value"] == 4
    with pytest.raises(ValueError, match="NaN"): localise(np.full((4, 3), np.nan), 0.5)
    with pytest.raises(ValueError, match="layers"): localise(np.zeros((4, 3)), 0.5, layers=[0, 1])
