"""Every lesson runs end to end under papermill on the embedded model, with small parameters (what CI can afford):
once with no data folder at all (as on a new user's machine: published data sets are skipped with a note and the
corpus falls back to generated texts), and, for the lessons that read data sets, once with the reference data."""
import pandas as pd
import pytest
from depthstudy.course import list_lessons, lesson_parameters, run_lesson
from depthstudy.results import COLUMNS

# Small parameters per lesson: every lesson must have an entry, so a new lesson cannot skip CI.
SMALL = {
    "00_first_look": {},
    "01_bigger_deeper": dict(n_items=6, n_long=1, n_calc=1, calc_ops=["add", "mul"], xmps_langs=["es"],
                             tasks=["calculation", "xmps-cal", "truthfulqa-mc3", "facts"], ladder=["qwen2.5-coder-0.5b"],
                             n_ladder=2),
    "02_depth_efficiency": dict(n_texts=3, n_items=2, layers_step=5, max_chars=200, chain_hops=[], fact_hops=[1, 2],
                                gsm8k_hops=[2, 4], map_target=""),
    "03_hierarchies": dict(n=40, levels=["items", "relations", "documents"], n_perm=1, cv=3, sites=["attn"], n_shuffle=100),
    "04_scale": dict(models=["smollm2-135m", "qwen2.5-coder-0.5b"], item_caps={"qwen2.5-coder-0.5b": 2}, n_items=3,
                     n_texts=2, max_chars=80, layers_step=6, n_stimuli=24, n_perm=0),
}
LESSONS = list_lessons()
READS_DATA = {l["name"] for l in LESSONS if {"data", "data_dir"} & set(l["parameters"])}
# every lesson without data (a new user's machine); with the reference data, lesson 01 (the one that reads the
# published sets; the others read only GSM8K texts, and the task loaders are tested on the real files elsewhere)
CASES = [pytest.param(l["name"], "none", id=f"{l['name']}-no-data") for l in LESSONS] + \
        [pytest.param("01_bigger_deeper", "reference", id="01_bigger_deeper-reference-data", marks=pytest.mark.needs_data)]


@pytest.mark.slow
@pytest.mark.parametrize("name,data", CASES)
def test_lesson_runs_with_small_parameters(name, data, tmp_path, monkeypatch):
    assert SMALL.get(name) is not None, f"add CI parameters for lesson {name} to SMALL in {__file__}"
    monkeypatch.setenv("NDIF_API_KEY", "MARKER-NDIF-KEY-do-not-leak-0042")
    if data == "none":                                   # a new user's machine: no data folder, no hub
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("DEPTHSTUDY_DATA", str(tmp_path / "empty"))
        monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")
    folder = run_lesson(name, {k: str(v) if not isinstance(v, str) else v for k, v in SMALL[name].items()},
                        out_dir=tmp_path / "runs", progress=False).parent
    nb = folder / f"{name}.ipynb"
    assert nb.exists()
    df = pd.read_csv(folder / "results.csv")
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS and len(df) > 0
    pngs = list(folder.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    for f in folder.rglob("*"):
        if f.is_file():
            assert b"MARKER-NDIF-KEY" not in f.read_bytes(), f"the NDIF key leaked into {f}"
    text = nb.read_text(encoding="utf-8")
    if data == "none" and name in READS_DATA:            # the run says what it skipped or replaced, visibly
        assert "not found" in text or "skipped" in text or "generated" in text, "no note about the missing data"
    assert str(tmp_path / "empty") not in text, "the executed lesson shows this machine's data path"
