"Tests for depthstudy.tasks: real data files, malformed copies, generators, multi-hop sets."
import json, os
from decimal import Decimal
from pathlib import Path

import pytest

from depthstudy.tasks import (FACTS, RELATIONS, MCItem, Template, TaskDataError, TaskDataMissing, TASKS,
                              arithmetic_chains, calculation, factual, find_data, generic, gsm8k_by_steps,
                              lama, load_task, math_dataset, mps_cal, mps_rea, mquake, multihop_facts,
                              near_numbers, perturb_solution, reclor, template_for, truthfulqa, xmps_cal)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEPTHSTUDY_DATA", ROOT.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "seed000").is_dir(), reason=f"no reference data at {DATA}")


def _lines(p):
    return Path(p).read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------- item and template
def test_mcitem_validation_and_id():
    it = MCItem("q", ["a", "b", "c"], [1], "t")
    assert it.best == "b" and it.false_choices == ["a", "c"] and it.id == MCItem("q", ["a", "b", "c"], [1], "t").id
    assert it.id != MCItem("q", ["a", "b", "c"], [0], "t").id
    for kw in (dict(choices=["a"], correct=[0]), dict(choices=["a", "b"], correct=[2]), dict(choices=["a", "b"], correct=[])):
        with pytest.raises(ValueError):
            MCItem("q", task="t", **kw)


def test_template():
    it = MCItem("What?", ["x", "y"], [0], "t", meta=dict(context="P"))
    assert Template().prompt(it) == "Q: What?\nA:" and Template().continuation("x") == " x"
    assert Template(header="H\n", fmt="P: {context}\nQ: {question}\nA:").prompt(it) == "H\nP: P\nQ: What?\nA:"


# ---------------------------------------------------------------- real files
@needs_data
def test_mps_cal_and_xmps_counts():
    cal = mps_cal(DATA / "seed000" / "gsm8k_cal_mc.json")
    assert len(cal) == 712
    raw = [json.loads(l) for l in _lines(DATA / "seed000" / "gsm8k_cal_mc.json")]
    assert all(len(x.choices) == len(r["truth_answer"]) + len(r["error"]) for x, r in zip(cal, raw))
    assert all("\n" not in c for x in cal for c in x.choices)
    assert len(mps_cal(DATA / "seed000" / "gsm8k_cal_mc.json", drop_degenerate=True)) == 710
    for lang in ("es", "fr", "zh", "th"):
        xs = xmps_cal(DATA, lang)
        rows = [json.loads(l) for l in _lines(DATA / "seed000" / f"gsm8k_cal_mc_{xs[0].meta['lang']}.json")]
        assert 701 <= len(xs) <= 712 and len(xs) == len(rows)
        assert all(x.best == r["m_truth_answer"].replace("\n", " ").replace("####", "The answer is").strip() for x, r in zip(xs, rows))
    assert len(load_task("xmps-cal-zh", DATA)) == 701


@needs_data
def test_reclor_truthfulqa_lama():
    rc = reclor(DATA / "seed000" / "reclor_val.json")
    assert len(rc) == 500 and all(len(x.choices) == 4 and len(x.correct) == 1 for x in rc)
    raw = json.loads((DATA / "seed000" / "reclor_val.json").read_text(encoding="utf-8"))
    assert all(x.best == r["answers"][r["label"]] for x, r in zip(rc, raw))
    t1 = truthfulqa(DATA / "seed000" / "TruthfulQA.csv", "mc1")
    t3 = truthfulqa(DATA / "seed000" / "TruthfulQA.csv", "mc3")
    assert len(t1) == len(t3) == 817
    assert t1[0].question.startswith("What happens to you if you eat watermelon seeds")   # BOM handled
    assert all(x.correct == [0] and set(x.false_choices).isdisjoint(x.true_choices) for x in t1)
    assert all(len(x.correct) >= 1 and x.best == y.best for x, y in zip(t3, t1))
    lm = lama(DATA / "seed000" / "mlama_short.tsv")
    assert len(lm) == 3036
    assert all(len(x.choices) >= 2 and x.best == x.choices[0] and len(set(x.choices)) == len(x.choices) for x in lm)
    assert all("<mask>" not in x.question and x.meta["prompt"].startswith(x.question) for x in lm)


@needs_data
def test_gsm8k_based_sets():
    gs = gsm8k_by_steps(DATA / "gsm8k" / "test.jsonl")
    assert len(gs) == 1319 and all("<<" not in x.meta["solution"] and x.best not in x.false_choices for x in gs)
    rows = [json.loads(l) for l in _lines(DATA / "gsm8k" / "test.jsonl")]
    assert [x.meta["hops"] for x in gs] == [r["answer"].count("<<") for r in rows]
    rea = mps_rea(DATA / "gsm8k" / "test.jsonl", n=40, seed=0)
    assert len(rea) == 40
    for x in rea:
        assert len(set(x.choices)) == 4 and x.correct == [0]
        final = x.best.rsplit("The answer is", 1)[1].strip()
        assert all(w.rsplit("The answer is", 1)[1].strip() != final for w in x.false_choices)


def test_perturb_propagates():
    sol = "2*3=<<2*3=6>>6 apples\n6+4=<<6+4=10>>10\n#### 10"
    assert perturb_solution(sol, 0, "7") == "2*3=<<2*3=7>>7 apples\n7+4=<<7+4=11>>11\n#### 11"
    assert perturb_solution(sol, 5, "7") is None


def test_missing_file_message(tmp_path):
    with pytest.raises(TaskDataMissing, match="TruthfulQA.csv.*DEPTHSTUDY_DATA"):
        load_task("truthfulqa-mc1", data_dir=tmp_path)
    with pytest.raises(TaskDataMissing, match="nope.jsonl"):
        generic(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("no-such-task")


# ---------------------------------------------------------------- malformed copies
def _broken_copy(tmp_path, src, name, lineno, new_line):
    lines = _lines(src)[:5]
    lines[lineno - 1] = new_line
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@needs_data
def test_malformed_mps_cal(tmp_path):
    src = DATA / "seed000" / "gsm8k_cal_mc.json"
    p = _broken_copy(tmp_path, src, "badjson.json", 3, '{"question": "x", "truth_answer": [')
    with pytest.raises(TaskDataError, match=r"badjson\.json, line 3: invalid JSON"):
        mps_cal(p)
    p = _broken_copy(tmp_path, src, "nofield.json", 2, json.dumps({"question": "x", "truth_answer": ["a"]}))
    with pytest.raises(TaskDataError, match=r"nofield\.json, line 2: missing field 'error'"):
        mps_cal(p)
    p = _broken_copy(tmp_path, DATA / "seed000" / "gsm8k_cal_mc_Thai.json", "x.json", 4, json.dumps({"question": "x", "truth_answer": ["a"], "error": ["b"]}))
    with pytest.raises(TaskDataError, match=r"x\.json, line 4: missing field 'm_truth_answer'"):
        xmps_cal(p, "th")


@needs_data
def test_malformed_gsm8k_lama_truthfulqa_reclor(tmp_path):
    p = _broken_copy(tmp_path, DATA / "gsm8k" / "test.jsonl", "g.jsonl", 2, json.dumps({"question": "q", "answer": "no final"}))
    with pytest.raises(TaskDataError, match=r"g\.jsonl, line 2: .*####"):
        gsm8k_by_steps(p)
    p = _broken_copy(tmp_path, DATA / "seed000" / "mlama_short.tsv", "l.tsv", 3, "Michelangelo died in Rome.\tRome\tVenice, Rome\tMichelangelo")
    with pytest.raises(TaskDataError, match=r"l\.tsv, line 3: .*<mask>"):
        lama(p)
    p = _broken_copy(tmp_path, DATA / "seed000" / "mlama_short.tsv", "l2.tsv", 4, "X is in <mask>.\tY")
    with pytest.raises(TaskDataError, match=r"l2\.tsv, line 4: expected 4 tab-separated fields"):
        lama(p)
    p = tmp_path / "tq.csv"
    p.write_text("\ufeffType,Category,Question,Best Answer,Correct Answers\nA,B,Q?,yes,yes\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"tq\.csv, line 1: missing column 'Incorrect Answers'"):
        truthfulqa(p)
    raw = json.loads((DATA / "seed000" / "reclor_val.json").read_text(encoding="utf-8"))[:3]
    raw[1]["label"] = 7
    p = tmp_path / "r.json"; p.write_text(json.dumps(raw))
    with pytest.raises(TaskDataError, match=r"r\.json: record 1 .*label 7 out of range"):
        reclor(p)


def test_generic_and_its_errors(tmp_path):
    p = tmp_path / "ok.jsonl"
    p.write_text('{"question": "a?", "choices": ["x", "y"], "answer": 1}\n\n{"question": "b?", "choices": ["x", "y", "z"], "answer": [0, 2], "task": "T"}\n')
    items = load_task(f"generic:{p}")
    assert [x.correct for x in items] == [[1], [0, 2]] and items[1].task == "T"
    cases = {
        '{"question": "a?", "choices": ["x", "y"], "answer": 3}': "out of range",
        '{"question": "a?", "choices": ["x"], "answer": 0}': "fewer than 2 choices",
        '{"question": "a?", "answer": 0}': "missing field 'choices'",
        '{"question": "a?", "choices": ["x", "y"], "answer": 0': "invalid JSON",
    }
    for k, (line, msg) in enumerate(cases.items()):
        b = tmp_path / f"bad{k}.jsonl"
        b.write_text('{"question": "ok", "choices": ["x", "y"], "answer": 0}\n' + line + "\n")
        with pytest.raises(TaskDataError, match=rf"bad{k}\.jsonl, line 2: .*{msg}"):
            generic(b)


# ---------------------------------------------------------------- generators
@pytest.mark.parametrize("kind", ["int", "float"])
@pytest.mark.parametrize("digits", [(1, 2), (3, 4), (5, 6)])
def test_calculation_items(kind, digits):
    for op in ("add", "sub", "mul", "div", "mix2", "mix3"):
        xs = calculation(op, digits, n=15, seed=0, kind=kind)
        assert len(xs) == 15 and len({x.question for x in xs}) == 15
        for x in xs:
            assert len(x.choices) == 5 and len(set(x.choices)) == 5
            assert x.best == x.meta["answer"] and x.meta["op"] == op and x.meta["digits"] == digits
            assert all(Decimal(c) != Decimal(x.best) for c in x.false_choices)
            if op in ("add", "sub", "mul", "div"):
                a, b = (Decimal(v) for v in x.meta["expr"].split(f" {dict(add='+', sub='-', mul='*', div='/')[op]} "))
                assert Decimal(x.best) == {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b if b else None}[op]
                assert all(len(str(v).split(".")[0]) in range(digits[0], digits[1] + 1) for v in (b,))


def test_calculation_determinism_and_nearness():
    a = calculation("add", (3, 4), n=20, seed=0)
    assert [(x.question, x.choices) for x in a] == [(x.question, x.choices) for x in calculation("add", (3, 4), n=20, seed=0)]
    assert [x.question for x in a] != [x.question for x in calculation("add", (3, 4), n=20, seed=1)]
    # distractors near the truth: same number of digits give or take one
    for x in a:
        assert all(abs(len(c) - len(x.best)) <= 1 for c in x.false_choices)
    with pytest.raises(ValueError):
        calculation("pow")


def test_near_numbers():
    for t in ["0", "5", "99", "-42", "3.14", "100000"]:
        ds = near_numbers(t, 6)
        assert len(set(ds)) == 6 and t not in ds and all(Decimal(d) != Decimal(t) for d in ds)
        if not t.startswith("-"):
            assert all(Decimal(d) >= 0 for d in ds)


def test_fact_table():
    assert len(FACTS) >= 300
    assert len({(s, r) for s, r, _ in FACTS}) == len(FACTS)
    assert len({r for _, r, _ in FACTS}) >= 5 and {r for _, r, _ in FACTS} <= set(RELATIONS)
    fx = factual(seed=0)
    assert len(fx) == len(FACTS)
    objs = {}
    for s, r, o in FACTS: objs.setdefault(r, set()).add(o)
    for x in fx:
        assert len(set(x.choices)) == len(x.choices) and x.best not in x.false_choices
        assert set(x.choices) <= objs[x.meta["relation"]]
    sub = factual(n=30, seed=1, relations=["capital", "symbol"])
    assert len(sub) == 30 and {x.meta["relation"] for x in sub} <= {"capital", "symbol"}


@pytest.mark.parametrize("k", range(1, 7))
def test_arithmetic_chains(k):
    xs = arithmetic_chains(k, n=30, seed=k)
    assert len(xs) == 30
    for x in xs:
        assert x.meta["hops"] == k and len(x.meta["steps"]) == k
        assert x.best == str(x.meta["steps"][-1]) and len(set(x.choices)) == len(x.choices) == 5
        # replay the chain from the question text
        v = None
        for sent in x.question.split(". "):
            w = sent.split()
            if w[0] == "Start": v = int(w[2].rstrip("."))
            elif w[0] == "Add": v += int(w[1].rstrip("."))
            elif w[0] == "Subtract": v -= int(w[1].rstrip("."))
            elif w[0] == "Multiply": v *= int(w[2].rstrip("."))
            elif w[0] == "Divide": assert v % int(w[2].rstrip(".")) == 0; v //= int(w[2].rstrip("."))
        assert str(v) == x.best


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_multihop_facts(hops):
    xs = multihop_facts(hops, n=None, seed=0)
    assert len(xs) >= 50
    facts = {(s, r): o for s, r, o in FACTS}
    for x in xs:
        assert x.meta["hops"] == hops and len(x.meta["chain"]) == hops
        assert len(set(x.choices)) == len(x.choices) >= 3 and x.best not in x.false_choices
        country_or_el = x.meta["chain"][-1]
        assert facts[(country_or_el, x.meta["relation"])] == x.best
        if hops == 3:
            lm, cap, c = x.meta["chain"]
            assert facts[(lm, "landmark_city")] == cap and facts[(c, "capital")] == cap
    assert len(multihop_facts(hops, n=20, seed=0)) == 20


def test_mquake_and_math_by_path(tmp_path):
    cases = [dict(case_id=i, questions=[f"Q{i}?", f"Q{i} again?"], answer=a, answer_alias=[], single_hops=[{}] * h)
             for i, (a, h) in enumerate([("Paris", 2), ("Rome", 2), ("Lima", 3), ("Oslo", 3), ("Bern", 4), ("Kyiv", 2)])]
    (tmp_path / "mq.json").write_text(json.dumps(cases))
    mq = load_task(f"mquake:{tmp_path / 'mq.json'}")
    assert [x.meta["hops"] for x in mq] == [2, 2, 3, 3, 4, 2] and [x.best for x in mq] == [c["answer"] for c in cases]
    assert all(x.best not in x.false_choices and len(x.choices) >= 2 for x in mq)
    bad = [dict(c) for c in cases]; del bad[2]["single_hops"]
    (tmp_path / "mqbad.json").write_text(json.dumps(bad))
    with pytest.raises(TaskDataError, match=r"mqbad\.json: record 2 .*single_hops"):
        mquake(tmp_path / "mqbad.json")
    rows = [dict(problem="1+1?", solution="So $\\boxed{2}$.", level="Level 1"),
            dict(problem="half?", solution="$\\boxed{\\frac{1}{2}}$", level="Level 4"),
            dict(problem="x?", solution="$\\boxed{x^{2}}$", level=5)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    mt = math_dataset(tmp_path / "m.jsonl")
    assert [x.meta["hops"] for x in mt] == [1, 4, 5] and [x.best for x in mt] == ["2", "\\frac{1}{2}", "x^{2}"]
    rows[1]["solution"] = "no box"
    (tmp_path / "mbad.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TaskDataError, match=r"mbad\.jsonl, line 2: .*boxed"):
        math_dataset(tmp_path / "mbad.jsonl")


@needs_data
def test_load_task_every_name():
    for name in TASKS:
        if ":" in name: continue
        xs = load_task(name, DATA, n=5, seed=0)
        assert len(xs) == 5 and all(isinstance(x, MCItem) for x in xs), name
        assert template_for(xs[0].task).prompt(xs[0])
    assert [x.id for x in load_task("lama", DATA, n=10, seed=2)] == [x.id for x in load_task("lama", DATA, n=10, seed=2)]
