"Tests for depthstudy.plots: every plot draws real tidy tables and shows what the table holds."
import matplotlib
matplotlib.use("Agg")
import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from depthstudy import plots
from depthstudy.plots import (layer_curves, task_layer_heatmap, calc_grid, pair_heatmap, peak_bands, peak_table,
                              compare_models, save_figure, palette, style, HIERARCHY_LLAMA32_3B)
from depthstudy.results import peak_band

COLUMNS = ["model", "n_layers", "task", "layer", "rel_depth", "metric", "value", "ci_low", "ci_high", "n", "chance"]


def frame(rows):
    "A tidy results table in the schema of depthstudy.results (built by hand)."
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df.columns: df[c] = np.nan
    df["rel_depth"] = df["layer"] / df["n_layers"]
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def curves(models=(("small", 6), ("deep", 12)), tasks=("facts", "maths"), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for (m, L), t in itertools.product(models, tasks):
        for l in range(L + 1):
            v = 0.25 + 0.5 * l / L + rng.normal(0, 0.02)
            rows.append(dict(model=m, n_layers=L, task=t, layer=l, metric="mc1", value=v, ci_low=v - .05,
                             ci_high=v + .05, n=100, chance=0.25 if t == "facts" else 0.2))
            rows.append(dict(model=m, n_layers=L, task=t, layer=l, metric="mc2", value=v / 2, n=100))
    return frame(rows)


def gid(ax, name, kind="lines"):
    return [a for a in getattr(ax, kind) if a.get_gid() == name]


def panels(fig):
    return [a for a in fig.axes if a.get_label() != "<colorbar>" and a.get_visible() and a.get_title()]


# ---- layer_curves -----------------------------------------------------------------------------

def test_layer_curves_several_models_use_relative_depth():
    df = curves(tasks=("facts",))
    fig = layer_curves(df, "mc1")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    lines = gid(ax, "curve")
    assert len(lines) == 2                                   # one line per model
    assert ax.get_xlim() == (0.0, 1.0) and "relative depth" in ax.get_xlabel()
    assert ax.get_ylabel() == "MC1 accuracy"
    deep = df[(df.model == "deep") & (df.metric == "mc1")].sort_values("layer")
    line = [l for l in lines if l.get_label() == "deep"][0]
    assert np.allclose(line.get_xdata(), deep.rel_depth) and np.allclose(line.get_ydata(), deep.value)
    assert len(gid(ax, "ci", "collections")) == 2            # one CI band per curve
    ch = gid(ax, "chance")
    assert len(ch) == 1 and ch[0].get_linestyle() == "--" and np.allclose(ch[0].get_ydata(), 0.25)
    assert palette(["small", "deep"])["deep"] == line.get_color()   # colour fixed per model


def test_layer_curves_one_model_uses_layers_and_task_colours():
    df = curves(models=(("small", 6),))
    fig = layer_curves(df, "mc1")
    ax = fig.axes[0]
    lines = gid(ax, "curve")
    assert sorted(l.get_label() for l in lines) == ["facts", "maths"]
    assert ax.get_xlabel() == "layer" and max(lines[0].get_xdata()) == 6
    assert len(set(l.get_color() for l in lines)) == 2
    assert len(gid(ax, "chance")) == 2                       # chance differs per task: one line each
    assert ax.get_title() == "small"


def test_layer_curves_models_and_tasks_and_ax():
    from matplotlib.figure import Figure as F
    host = F(); ax = host.subplots()
    fig = layer_curves(curves(), "mc1", ax=ax)
    assert fig is host
    lines = gid(ax, "curve")
    assert len(lines) == 4                                   # 2 models x 2 tasks, tasks as line styles
    assert len({l.get_linestyle() for l in lines}) == 2 and len({l.get_color() for l in lines}) == 2


def test_layer_curves_no_ci_no_chance_and_x_layer():
    df = curves()
    fig = layer_curves(df, "mc2", x="layer", tasks="facts")   # mc2 has no CI or chance
    ax = fig.axes[0]
    assert not gid(ax, "ci", "collections") and not gid(ax, "chance")
    assert ax.get_xlabel() == "layer" and max(max(l.get_xdata()) for l in gid(ax, "curve")) == 12


def test_layer_curves_bad_input():
    df = curves()
    with pytest.raises(ValueError, match=r"metric 'acc' is not in the table; metrics there: \['mc1', 'mc2'\]"):
        layer_curves(df, "acc")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['layer'\]; it has \['model'"):
        layer_curves(df.drop(columns="layer"), "mc1")
    with pytest.raises(ValueError, match=r"task \['nope'\] not in the table"):
        layer_curves(df, "mc1", tasks=["nope"])
    with pytest.raises(ValueError, match=r"x must be one of"):
        layer_curves(df, "mc1", x="depth")
    two_sites = pd.concat([df.assign(site="attn"), df.assign(site="mlp")])
    with pytest.raises(ValueError, match=r"differ in \['site'\]"):
        layer_curves(two_sites, "mc1")
    fig = layer_curves(two_sites[two_sites.task == "facts"], "mc1", style_by="site")   # the way out
    assert len(gid(fig.axes[0], "curve")) == 4
    with pytest.raises(TypeError):
        layer_curves(df.to_dict(), "mc1")


# ---- task_layer_heatmap -----------------------------------------------------------------------

def test_task_layer_heatmap_values_and_panels():
    df = curves()
    fig = task_layer_heatmap(df, "mc1")
    ps = panels(fig)
    assert [a.get_title() for a in ps] == ["small", "deep"]
    for a in ps:
        m = a.get_title()
        d = df[(df.model == m) & (df.metric == "mc1")]
        want = d.pivot(index="task", columns="layer", values="value").loc[["facts", "maths"]]
        chance = d.groupby("task").chance.first().loc[["facts", "maths"]].to_numpy()[:, None]
        got = np.asarray(gid(a, "heatmap", "collections")[0].get_array())
        # chance differs per row (0.25, 0.2): the colours are value - chance, so equal colours mean equal distance
        assert got.shape == want.shape and np.allclose(got, want.to_numpy() - chance)
        assert [t.get_text() for t in a.get_yticklabels()] == ["facts (chance 0.25)", "maths (chance 0.20)"]
    same = task_layer_heatmap(df.assign(chance=0.25), "mc1")          # one chance level: values coloured as they are
    got = np.asarray(gid(panels(same)[0], "heatmap", "collections")[0].get_array())
    assert np.allclose(got, df[(df.model == "small") & (df.metric == "mc1")].pivot(
        index="task", columns="layer", values="value").loc[["facts", "maths"]].to_numpy())
    small = ps[0]
    texts = gid(small, "annot", "texts")                     # small table: every cell annotated
    assert len(texts) == 2 * 7
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)


def test_task_layer_heatmap_missing_cells_and_errors():
    df = curves(models=(("small", 6),))
    df = df[~((df.task == "maths") & (df.layer == 3))]
    fig = task_layer_heatmap(df, "mc1")
    arr = gid(fig.axes[0], "heatmap", "collections")[0].get_array()
    assert np.ma.is_masked(arr) and arr.mask.sum() == 1
    with pytest.raises(ValueError, match="needs 2 axes"):
        from matplotlib.figure import Figure as F
        task_layer_heatmap(curves(), "mc1", ax=F().subplots())
    with pytest.raises(ValueError, match="metrics there"):
        task_layer_heatmap(df, "r2")


# ---- calc_grid --------------------------------------------------------------------------------

def calc_frame(L=4):
    ops, digits = ["mul", "add", "div", "sub"], ["5-6", "1-2", "3-4"]
    rows = [dict(model="small", n_layers=L, task="calc", layer=l, metric="mc1", op=op, digits=dg,
                 value=(l + 1) / (L + 1) * (1 - 0.1 * i - 0.2 * j), chance=0.25)
            for l in range(L + 1) for i, op in enumerate(ops) for j, dg in enumerate(digits)]
    return frame(rows)


def test_calc_grid_last_layer_ordered():
    df = calc_frame()
    fig = calc_grid(df, "mc1")
    a = panels(fig)[0]
    assert [t.get_text() for t in a.get_yticklabels()] == ["add", "sub", "mul", "div"]
    assert [t.get_text() for t in a.get_xticklabels()] == ["1-2", "3-4", "5-6"]
    want = df[df.layer == 4].pivot(index="op", columns="digits", values="value").loc[
        ["add", "sub", "mul", "div"], ["1-2", "3-4", "5-6"]]
    assert np.allclose(a.images[0].get_array(), want.to_numpy())
    assert "layer 4 (last)" in a.get_title() and a.get_xlabel() == "operand digits"
    assert len(gid(a, "annot", "texts")) == 12


def test_calc_grid_layer_choices_and_errors():
    df = calc_frame()
    a = panels(calc_grid(df, "mc1", layer=2))[0]
    want = df[df.layer == 2].pivot(index="op", columns="digits", values="value").loc[["add"], ["1-2"]]
    assert np.isclose(a.images[0].get_array()[0, 0], want.iloc[0, 0])
    a = panels(calc_grid(df, "mc1", layer=0.5))[0]
    assert "layer 2" in a.get_title()
    a = panels(calc_grid(df, "mc1", layer="best"))[0]       # rising with depth: best = last
    assert np.allclose(a.images[0].get_array(), panels(calc_grid(df, "mc1"))[0].images[0].get_array())
    with pytest.raises(ValueError, match=r"layer 9 not in the table; layers there: 0..4"):
        calc_grid(df, "mc1", layer=9)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['op'\]"):
        calc_grid(df.drop(columns="op"), "mc1")


# ---- pair_heatmap -----------------------------------------------------------------------------

def maps_frame(L=6, Lb=12, seed=1):
    rng = np.random.default_rng(seed)
    return frame([dict(model="small", n_layers=L, model_b="deep", n_layers_b=Lb, task="web", layer=i, layer_b=j,
                       metric="rel_error", value=0.1 + abs(i / L - j / Lb) + rng.uniform(0, 0.05))
                  for i in range(L + 1) for j in range(Lb + 1)])


def test_pair_heatmap_maps_best_match_and_secondary_axes():
    df = maps_frame()
    fig = pair_heatmap(df, "rel_error", best="min")
    a = panels(fig)[0]
    P = df.pivot(index="layer", columns="layer_b", values="value")
    assert np.allclose(gid(a, "heatmap", "collections")[0].get_array(), P.to_numpy())
    mk = gid(a, "best")[0]
    assert np.array_equal(mk.get_ydata(), P.index.to_numpy())
    assert np.array_equal(mk.get_xdata(), P.columns.to_numpy()[P.to_numpy().argmin(1)])
    assert len(a.child_axes) == 2                            # relative depth of both models
    assert "small" in a.get_ylabel() and "deep" in a.get_xlabel()
    diag = gid(a, "diagonal")[0]
    assert np.allclose(np.asarray(diag.get_xdata()) / 12, np.asarray(diag.get_ydata()) / 6)
    mx = gid(panels(pair_heatmap(df, "rel_error", best="max"))[0], "best")[0]
    assert np.array_equal(mx.get_xdata(), P.columns.to_numpy()[P.to_numpy().argmax(1)])


def test_pair_heatmap_skip_one_model_panels_per_site():
    L = 8
    rows = [dict(model="small", n_layers=L, task="gsm8k", layer=s, layer_b=j, metric="skip_effect", site=site,
                 value=np.exp(-(j - s)) * (2 if site == "mlp" else 1))
            for site in ("attn", "mlp") for s in range(L) for j in range(s + 1, L)]
    df = frame(rows)
    fig = pair_heatmap(df, "skip_effect")
    ps = panels(fig)
    assert len(ps) == 2 and all(not a.child_axes for a in ps)        # same model: no secondary axes
    assert ps[0].get_ylabel() == "skipped layer" and "measured" in ps[0].get_xlabel()
    arr = gid(ps[1], "heatmap", "collections")[0].get_array()
    assert np.ma.is_masked(arr) and np.isclose(arr[0, 0], 2 * np.exp(-1))   # skipped 0, measured 1, mlp
    assert not gid(ps[0], "best")


def test_pair_heatmap_errors():
    df = maps_frame()
    with pytest.raises(ValueError, match=r"best must be"):
        pair_heatmap(df, "rel_error", best="argmin")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['layer_b'\]"):
        pair_heatmap(curves(), "mc1")
    with pytest.raises(ValueError, match=r"n_layers_b"):
        pair_heatmap(df.drop(columns=["n_layers_b"]), "rel_error")


# ---- peak_bands -------------------------------------------------------------------------------

def hierarchy(models=(("small", 10), ("deep", 20))):
    rows = []
    for (m, L), (t, c) in itertools.product(models, [("items", .2), ("relations", .5), ("analogies", .7)]):
        for l in range(L + 1):
            v = 0.5 + 0.4 * np.exp(-((l / L - c) / 0.1) ** 2)
            rows.append(dict(model=m, n_layers=L, task=t, layer=l, metric="accuracy", value=v,
                             ci_low=v - 0.0392, ci_high=v + 0.0392))          # SE = 0.02
    return frame(rows)


def test_peak_band_numbers_come_from_probes():
    "peak_bands and peak_table draw and format depthstudy.probes.peak_band: one owner of the numbers."
    df = hierarchy()
    P = peak_band(df, "accuracy")
    assert len(P) == 6
    for _, r in P.iterrows():
        g = df[(df.model == r.model) & (df.task == r.task)].sort_values("layer")
        assert r.peak_layer == g.layer.iloc[g.value.argmax()]
        assert np.isclose(r.se, 0.02, atol=1e-4)                          # SE from the 95% CI
        band = g[(g.layer >= r.band_low) & (g.layer <= r.band_high)]
        assert (band.value >= g.value.max() - r.se).all()                  # every band layer within 1 SE
        outside = g[g.layer.isin([r.band_low - 1, r.band_high + 1])]
        assert (outside.value < g.value.max() - r.se).all()                # and the band is maximal
        assert r.band == list(range(r.band_low, r.band_high + 1))          # and contiguous
    assert P[P.model == "deep"].set_index("task").loc["items", "peak_layer"] == 4


def test_peak_table_formats_peak_band():
    df = hierarchy()
    P = peak_band(df, "accuracy")
    T = peak_table(df, "accuracy", ref=HIERARCHY_LLAMA32_3B, ref_label="paper")
    assert T.equals(peak_table(P, ref=HIERARCHY_LLAMA32_3B, ref_label="paper"))
    assert list(T.columns) == ["model", "task", "layers", "peak layer", "band (layers)", "peak (rel. depth)",
                               "band (rel. depth)", "peak value", "paper (layers)", "paper (rel. depth)"]
    r, p = T.iloc[0], P.iloc[0]
    assert r["peak layer"] == f"{p.peak_layer:g}" and r["band (layers)"] == (f"{p.band_low}" if p.band_low == p.band_high else f"{p.band_low}–{p.band_high}")
    assert r["peak (rel. depth)"] == f"{p.peak_layer / p.n_layers:.2f}"
    assert T.set_index(["model", "task"]).loc[("small", "items"), "paper (layers)"] == "2–7 of 28"
    t2 = peak_table(df, "accuracy", ref={"items": "early layers", "relations": (0.3, 0.4)})
    assert t2.loc[0, "paper (layers)"] == "early layers" and t2.loc[1, "paper (rel. depth)"] == "0.30–0.40"
    with pytest.raises(ValueError, match="name the metric"):
        peak_table(df)


def test_peak_bands_draws_bands_and_reference():
    df = hierarchy()
    fig = peak_bands(df, "accuracy", ref=HIERARCHY_LLAMA32_3B)
    a = fig.axes[0]
    bands, refs = gid(a, "band", "patches"), gid(a, "ref", "patches")
    assert len(bands) == 6 and len(refs) == 3
    assert a.get_xlim() == (0.0, 1.0)
    assert [t.get_text() for t in a.get_yticklabels()] == ["items", "relations", "analogies"]
    ref_items = min(refs, key=lambda p: abs(p.get_y() + p.get_height() / 2))   # row 0 = items
    assert np.isclose(ref_items.get_x(), 1.5 / 28) and np.isclose(ref_items.get_x() + ref_items.get_width(), 7.5 / 28)
    P = peak_band(df, "accuracy")
    assert sorted(np.round([l.get_xdata()[0] for l in gid(a, "peak")], 6)) == sorted(np.round(P.rel_peak, 6))
    fig2 = peak_bands(P, ref=HIERARCHY_LLAMA32_3B)                         # peak_band's output draws the same
    assert [p.get_x() for p in gid(fig2.axes[0], "band", "patches")] == [p.get_x() for p in bands]


def test_peak_bands_hue_by_site():
    df = pd.concat([hierarchy(models=(("small", 10),)).assign(site=s, value=lambda d, k=k: d.value - k)
                    for k, s in enumerate(["resid", "attn"])], ignore_index=True)
    with pytest.raises(ValueError, match="varies in \\['site'\\]"):
        peak_bands(df, "accuracy")
    fig = peak_bands(df, "accuracy", hue="site")
    a = fig.axes[0]
    assert len(gid(a, "band", "patches")) == 6
    assert sorted(a.get_legend_handles_labels()[1]) == ["attn", "resid"]


def test_peak_bands_relative_ref_and_errors():
    df = hierarchy(models=(("small", 10),))
    fig = peak_bands(df, "accuracy", ref={"items": (0.1, 0.3), "documents": (0.8, 1.0)})
    a = fig.axes[0]
    assert [t.get_text() for t in a.get_yticklabels()][-1] == "documents"   # reference-only row kept
    assert len(gid(a, "band", "patches")) == 3
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['n_layers'\]"):
        peak_bands(df.drop(columns="n_layers"), "accuracy")


# ---- compare_models ---------------------------------------------------------------------------

def test_compare_models_one_panel_per_task():
    df = curves(models=(("small", 6), ("mid", 9), ("deep", 12)), tasks=("facts", "maths", "logic", "truth"))
    fig = compare_models(df, "mc1", ncols=2)
    ps = panels(fig)
    assert [a.get_title() for a in ps] == ["facts", "maths", "logic", "truth"]
    cols = palette(["small", "mid", "deep"])
    for a in ps:
        lines = gid(a, "curve")
        assert len(lines) == 3 and a.get_xlim() == (0.0, 1.0)
        assert {l.get_label(): l.get_color() for l in lines} == cols    # same colours in every panel
    assert len(fig.legends) == 1
    fig2 = compare_models(df, "mc1", tasks=["logic"], models=["deep", "small"])
    assert [l.get_label() for l in gid(panels(fig2)[0], "curve")] == ["deep", "small"]
    with pytest.raises(ValueError, match=r"model \['huge'\] not in the table"):
        compare_models(df, "mc1", models=["huge"])


# ---- style and saving ---------------------------------------------------------------------------

def test_style_and_palette_are_stable():
    import matplotlib as mpl
    with style():
        assert mpl.rcParams["axes.grid"] and mpl.rcParams["savefig.dpi"] == 150
    assert palette(["a", "b", "c"]) == palette(["c", "a", "b"])
    assert len(set(palette([f"m{i}" for i in range(8)]).values())) == 8


def test_save_figure_writes_png(tmp_path):
    fig = layer_curves(curves(), "mc1")
    p = save_figure(fig, tmp_path / "sub" / "curves")
    assert p == tmp_path / "sub" / "curves.png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w = int.from_bytes(p.read_bytes()[16:20], "big")
    assert 640 < w < 6.4 * 150 * 1.3          # 150 dpi, tight bbox (figure is 6.4 in wide at most)
    with pytest.raises(TypeError):
        save_figure("not a figure", tmp_path / "x.png")
