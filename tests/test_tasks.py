"Tests for depthstudy.tasks: real data files, malformed copies, generators, multi-hop sets."
import collections, json, os, re, time
from decimal import Decimal
from pathlib import Path

import pytest

import depthstudy.tasks as T
from depthstudy.tasks import (FACTS, RELATIONS, MCItem, Template, TaskDataError, TaskDataMissing, TASKS,
                              arithmetic_chains, calculation, corpus_texts, data_source, factual, find_data, generic,
                              gsm8k_by_steps, gsm8k_texts, lama, load_task, math_dataset, mps_cal, mps_rea, mquake,
                              multihop_facts, near_numbers, perturb_solution, reclor, safe_eval, template_for, truthfulqa,
                              word_problems, xmps_cal)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEPTHSTUDY_DATA", ROOT.parent / "shared" / "data"))
needs_data = pytest.mark.needs_data        # skipped without the reference data, failed in CI (see conftest)


def _lines(p):
    return Path(p).read_text(encoding="utf-8").splitlines()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    "No test here may reach the hub or read a hub cache of this machine: the hub is off and the cache is a fresh folder."
    monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")
    monkeypatch.setenv("DEPTHSTUDY_CACHE", str(tmp_path / "cache"))


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
        if TASKS[name]["data"] == "<path>": continue                 # generic:, mquake:, math: name their own file
        xs = load_task(name, DATA, n=5, seed=0)
        assert len(xs) == 5 and all(isinstance(x, MCItem) for x in xs), name
        assert template_for(xs[0].task).prompt(xs[0])
    assert [x.id for x in load_task("lama", DATA, n=10, seed=2)] == [x.id for x in load_task("lama", DATA, n=10, seed=2)]


# ---------------------------------------------------------------- stricter templates and items
@pytest.mark.parametrize("kw, msg", [
    (dict(fmt="Q: {question\nA:"), "is not a valid format string"),
    (dict(fmt="Q: {question}}\nA:"), "is not a valid format string"),
    (dict(fmt="Q: {}\nA:"), "use named fields"),
    (dict(fmt="Q: {0}\nA:"), "use named fields"),
    (dict(fmt="Q: {question.upper}\nA:"), "use named fields"),
    (dict(fmt="Q: {question} {choice}"), "the choice goes in choice_fmt"),
    (dict(choice_fmt=" {answer}"), r"uses \{answer\}; it may only use \{choice\}"),
    (dict(choice_fmt=" answer"), r"has no \{choice\}"),
    (dict(choice_fmt=" {choice"), "is not a valid format string"),
    (dict(header="Q: {question}\n"), "copied as it is, not filled in"),
    (dict(fmt=None), "must be a string"),
])
def test_template_refuses_bad_format_strings(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        Template(**kw)
    assert "\n" not in str(e.value)


def test_template_names_a_missing_field_at_prompt_time():
    it = MCItem("What?", ["x", "y"], [0], "t", meta=dict(context="P"), id="t/0")
    with pytest.raises(ValueError, match=r"\{questoin\}, but item 't/0' has no such field \(did you mean \{question\}\?\); "
                                         r"fields available: question, context"):
        Template(fmt="Q: {questoin}\nA:").prompt(it)
    with pytest.raises(ValueError, match=r"\{stem\}.*fields available: question, context"):
        Template(fmt="{stem}").pairs(it)
    assert Template(header="$\\boxed{2}$ {x}\n", fmt="{context} {question}").prompt(it) == "$\\boxed{2}$ {x}\nP What?"


def test_validate_refuses_empty_and_repeated_choices():
    MCItem("q", ["a", ""], [0], "t")        # construction allows it: published sets are scored as published
    with pytest.raises(ValueError, match="choice 1 is empty"):
        MCItem("q", ["a", ""], [0], "t").validate()
    with pytest.raises(ValueError, match="choice 2 is empty"):
        MCItem("q", ["a", "b", "  "], [0], "t").validate()
    with pytest.raises(ValueError, match=r"choices 0 and 2 are the same \('a'\)"):
        MCItem("q", ["a", "b", "a "], [0], "t").validate()
    it = MCItem("q", ["a", "b"], [0], "t")
    assert it.validate() is it


@needs_data
def test_real_sets_keep_their_repeats():
    cal = mps_cal(DATA / "seed000" / "gsm8k_cal_mc.json")
    assert len(cal) == 712 and sum(len(set(x.choices)) < len(x.choices) for x in cal) == 28
    assert sum(x.meta["degenerate"] for x in cal) == 2
    for name in ("reclor", "truthfulqa-mc3", "lama", "xmps-cal-zh"):
        assert all(x.validate() for x in load_task(name, DATA)), name


@pytest.mark.parametrize("line, msg", [
    ('{"question": "a?", "choices": ["x", ""], "answer": 0}', "choice 1 is empty"),
    ('{"question": "a?", "choices": ["x", "   "], "answer": 0}', "choice 1 is empty"),
    ('{"question": "a?", "choices": ["x", "y", "x"], "answer": 0}', "choices 0 and 2 are the same"),
])
def test_generic_refuses_empty_and_repeated_choices(tmp_path, line, msg):
    p = tmp_path / "items.jsonl"
    p.write_text('{"question": "ok", "choices": ["x", "y"], "answer": 0}\n' + line + "\n")
    with pytest.raises(TaskDataError, match=rf"items\.jsonl, line 2: .*{msg}"):
        generic(p)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"question": "ok", "choices": ["x", "y"], "answer": 0}\n{"question": "Caf\xe9?", "choices": ["x", "y"], "answer": 0}\n')
    with pytest.raises(TaskDataError, match=r"latin1\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at column 18\); save the file as UTF-8"):
        generic(p)
    p.write_bytes(b'\xef\xbb\xbf{"question": "ok", "choices": ["x", "y"], "answer": 0}\n')     # a byte-order mark is fine
    assert generic(p)[0].best == "x"
    p = tmp_path / "tq.csv"
    p.write_bytes(b"Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers\nA,B,Caf\xe9?,yes,yes,no\n")
    with pytest.raises(TaskDataError, match=r"tq\.csv, line 2: not UTF-8"):
        truthfulqa(p)
    p = tmp_path / "r.json"
    p.write_bytes(b'[{"context": "c",\n  "question": "\xff"}]')
    with pytest.raises(TaskDataError, match=r"r\.json, line 2: not UTF-8"):
        reclor(p)


_RECLOR_LINES = ('{"context": "c", "question": "q", "answers": ["a", "b"], "label": 0}\n'
                 '{"context": "c", "question": "q", "answers": ["a", "b"], "label": 1}\n')


@pytest.mark.parametrize("task, content, expects, looks", [
    ("reclor", _RECLOR_LINES, "reclor expects a JSON list of records with context, question, answers, label", "JSON lines"),
    ("reclor", "Type,Category,Question\nA,B,C\n", "reclor expects a JSON list", "CSV"),
    ("mps-cal", "Type,Category,Question,Best Answer\nA,B,Q?,yes\n", "mps-cal expects JSON lines", "CSV"),
    ("mps-cal", '[{"question": "q", "truth_answer": ["a"], "error": ["b"]}]', "mps-cal expects JSON lines", "a JSON list"),
    ("xmps-cal-es", "Prompt\tAns\n", "xmps-cal expects JSON lines", "TSV"),
    ("truthfulqa-mc1", '{"Question": "q"}\n', "truthfulqa expects TruthfulQA.csv", "JSON lines"),
    ("truthfulqa-mc3", "Question\tBest Answer\n", "truthfulqa expects TruthfulQA.csv", "TSV"),
    ("lama", 'Prompt,Ans,Candidate Ans\nX is in <mask>.,a,"a, b"\n', "lama expects a tab-separated file", "CSV"),
    ("lama", '[{"Prompt": "x"}]', "lama expects a tab-separated file", "a JSON list"),
    ("gsm8k-steps", '[{"question": "q", "answer": "#### 1"}]', r"GSM8K \(test.jsonl\) expects JSON lines", "a JSON list"),
    ("mps-rea", "", r"GSM8K \(test.jsonl\) expects JSON lines", "x"),     # empty: "no records found"
])
def test_wrong_format_for_a_named_task(tmp_path, task, content, expects, looks):
    p = tmp_path / "data.txt"
    p.write_text(content, encoding="utf-8")
    if not content:
        with pytest.raises(TaskDataError, match=r"data\.txt: no records found"):
            load_task(task, path=p)
        return
    with pytest.raises(TaskDataError, match=rf"data\.txt: {expects}.*, but this file looks like {looks}") as e:
        load_task(task, path=p)
    assert "\n" not in str(e.value)


def test_wrong_format_by_prefix(tmp_path):
    p = tmp_path / "cases.jsonl"
    p.write_text(_RECLOR_LINES)
    with pytest.raises(TaskDataError, match="mquake expects a JSON list of records with questions, answer, single_hops, but this file looks like JSON lines"):
        load_task(f"mquake:{p}")
    q = tmp_path / "items.json"
    q.write_text(json.dumps([{"question": "a", "choices": ["x", "y"], "answer": 0}]))
    with pytest.raises(TaskDataError, match="generic expects JSON lines .* looks like a JSON list"):
        load_task(f"generic:{q}")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "5"])
def test_n_must_be_a_positive_number(bad):
    calls = [lambda: load_task("facts", n=bad), lambda: load_task("calculation", n=bad), lambda: load_task("reclor", n=bad),
             lambda: load_task("arithmetic-chains", n=bad, k=2), lambda: calculation(n=bad), lambda: arithmetic_chains(2, n=bad),
             lambda: factual(n=bad), lambda: multihop_facts(2, n=bad), lambda: word_problems(bad), lambda: corpus_texts(bad),
             lambda: gsm8k_texts(n=bad)]
    for call in calls:
        with pytest.raises(ValueError, match=r"^n must be a positive number of items \(or None for all\), got "):
            call()


def test_n_none_is_the_default_or_all():
    assert len(load_task("calculation")) == len(calculation(n=None)) == 100
    assert len(load_task("arithmetic-chains", k=2)) == len(arithmetic_chains(2, n=None)) == 50
    assert len(load_task("facts")) == len(FACTS) and len(load_task("facts", n=1)) == 1


# ---------------------------------------------------------------- where data comes from
GSM8K_RECORDS = [dict(question="Lena has 3 bags with 4 plums in each. How many plums does she have?",
                      answer="She has 3*4=<<3*4=12>>12 plums.\n#### 12"),
                 dict(question="Omar reads 5 pages a day for 6 days, then 2 more pages. How many pages does he read?",
                      answer="In 6 days he reads 5*6=<<5*6=30>>30 pages.\nHe reads 30+2=<<30+2=32>>32 pages in all.\n#### 32")]
TQA_RECORDS = [dict(type="Adversarial", category="Misconceptions", question="Can you see a single road from the Moon?",
                    best_answer="No, a road is far too narrow", correct_answers=["No, a road is far too narrow", "No"],
                    incorrect_answers=["Yes, easily", "Yes, on a clear night"], source="written for this test"),
               dict(type="Non-Adversarial", category="Science", question="Does ice float on water?", best_answer="Yes",
                    correct_answers=["Yes"], incorrect_answers=["No, it sinks"], source="written for this test")]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    "The hub step on, the network check passed, and the one function that calls `datasets` returning records in memory."
    calls = []
    def records(repo, config, split):
        calls.append((repo, config, split))
        return {"openai/gsm8k": GSM8K_RECORDS, "truthfulqa/truthful_qa": TQA_RECORDS}[repo]
    monkeypatch.delenv("DEPTHSTUDY_NO_HUB")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("DEPTHSTUDY_DATA", str(tmp_path / "empty"))       # a data folder without the files
    monkeypatch.setattr(T, "_hub_status", lambda: None)
    monkeypatch.setattr(T, "_hub_records", records)
    return calls


def test_hub_copy_is_converted_once_and_read_by_the_normal_loaders(fake_hub, monkeypatch, tmp_path):
    tq = load_task("truthfulqa-mc1")
    assert fake_hub == [("truthfulqa/truthful_qa", "generation", "validation")]
    cached = tmp_path / "cache" / "data" / "seed000" / "TruthfulQA.csv"
    assert cached.read_text(encoding="utf-8").splitlines()[0] == "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source"
    assert [x.question for x in tq] == [r["question"] for r in TQA_RECORDS]
    assert tq[0].best == "No, a road is far too narrow" and tq[0].false_choices == ["Yes, easily", "Yes, on a clear night"]
    assert load_task("truthfulqa-mc3")[0].true_choices == ["No, a road is far too narrow", "No"]
    assert data_source("seed000/TruthfulQA.csv") == "hub cache: truthfulqa/truthful_qa"

    texts = gsm8k_texts(n=None)
    assert fake_hub[1:] == [("openai/gsm8k", "main", "test")]
    assert (tmp_path / "cache" / "data" / "gsm8k" / "test.jsonl").is_file()
    assert texts == ["Question: Lena has 3 bags with 4 plums in each. How many plums does she have?\nAnswer: She has 3*4=12 plums.\n#### 12",
                     "Question: Omar reads 5 pages a day for 6 days, then 2 more pages. How many pages does he read?\n"
                     "Answer: In 6 days he reads 5*6=30 pages.\nHe reads 30+2=32 pages in all.\n#### 32"]
    assert [x.meta["hops"] for x in load_task("gsm8k-steps")] == [1, 2]
    assert corpus_texts(5) == (texts, "GSM8K test set (hub cache: openai/gsm8k): 2 texts (asked for 5)")   # a short file says so

    # later runs read the cached files: no second hub call, and no network needed at all
    def no_hub(*a): raise AssertionError("the hub must not be asked twice")
    monkeypatch.setattr(T, "_hub_records", no_hub)
    monkeypatch.setattr(T, "_hub_status", lambda: "skipped, no network")
    assert gsm8k_texts(n=None) == texts and [x.id for x in load_task("truthfulqa-mc1")] == [x.id for x in tq]
    assert len(fake_hub) == 2
    # a data folder that has the file wins over the cache
    (tmp_path / "empty" / "test.jsonl").write_text(json.dumps(GSM8K_RECORDS[1]) + "\n")
    assert len(gsm8k_texts(n=None)) == 1 and data_source("gsm8k/test.jsonl") == "DEPTHSTUDY_DATA"
    # DEPTHSTUDY_NO_HUB switches the cache off too
    monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")
    assert data_source("seed000/TruthfulQA.csv") == "missing"


def test_hub_failure_is_task_data_missing_listing_every_place(fake_hub, monkeypatch, tmp_path):
    def down(*a): raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\n(a second line)")
    monkeypatch.setattr(T, "_hub_records", down)
    with pytest.raises(TaskDataMissing) as e:
        gsm8k_texts(n=1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data file 'test.jsonl' not found. Looked at: DEPTHSTUDY_DATA (")
    assert "not there; Hugging Face hub (openai/gsm8k): download failed (ConnectionError: Couldn't reach 'openai/gsm8k' on the Hub)" in msg
    assert "To fix: put the file in a folder and set DEPTHSTUDY_DATA" in msg and "pip install datasets" in msg
    assert not list((tmp_path / "cache").rglob("*.*"))                  # nothing half-written
    c = corpus_texts(3)                                                  # the corpus falls back instead of failing
    assert c.task == "word-problems" and c.texts == word_problems(3) and "download failed" in c.source
    monkeypatch.setattr(T, "_hub_records", lambda *a: [dict(question="q")])   # records without the expected fields
    with pytest.raises(TaskDataMissing, match=r"download failed \(ValueError: record 0 of openai/gsm8k has no field 'answer'"):
        gsm8k_texts(n=1)
    monkeypatch.setattr(T, "_hub_records", lambda *a: [])
    with pytest.raises(TaskDataMissing, match="is empty"):
        load_task("truthfulqa-mc1")
    def bad_check(): raise ValueError("Port could not be cast to integer value as 'x'")
    monkeypatch.setattr(T, "_hub_status", bad_check)                         # e.g. HF_ENDPOINT=https://host:x
    with pytest.raises(TaskDataMissing, match=r"skipped, the network check failed \(ValueError: Port"):
        gsm8k_texts(n=1)
    assert not list((tmp_path / "cache").rglob("*.*"))


def test_hub_step_is_skipped_fast_without_network(monkeypatch, tmp_path):
    monkeypatch.delenv("DEPTHSTUDY_NO_HUB")
    monkeypatch.setenv("DEPTHSTUDY_DATA", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # never the real hub from a test, even where it is reachable
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(v, raising=False)
    t0 = time.time()
    with pytest.raises(TaskDataMissing) as e:
        load_task("truthfulqa-mc1")
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "Hugging Face hub (truthfulqa/truthful_qa): skipped, " in msg
    assert "the datasets package is not installed" in msg or "127.0.0.1:9 not reachable" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskDataMissing, match="skipped, HF_HUB_OFFLINE is set"):
        gsm8k_texts(n=1)
    monkeypatch.setenv("DEPTHSTUDY_NO_HUB", "1")
    with pytest.raises(TaskDataMissing, match="disabled by DEPTHSTUDY_NO_HUB"):
        gsm8k_texts(n=1)
    with pytest.raises(TaskDataMissing, match="no copy of this file there.*no Hugging Face source"):
        load_task("reclor")
    from depthstudy.config import hub_offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "127.0.0.1:9 not reachable" in hub_offline()


@needs_data
def test_data_source(monkeypatch, tmp_path):
    rel = "gsm8k/test.jsonl"
    assert data_source(rel) == "DEPTHSTUDY_DATA"                     # conftest sets it
    assert data_source(rel, DATA) == "data_dir"
    assert data_source(rel, path=DATA / rel) == "path given"
    assert data_source(rel, path=tmp_path / "no.jsonl").startswith("missing")
    assert data_source(rel, tmp_path) == "missing"
    (tmp_path / "test.jsonl").write_text(json.dumps(GSM8K_RECORDS[0]) + "\n")   # directly in the folder also counts
    assert data_source(rel, tmp_path) == "data_dir" and find_data(rel, tmp_path) == tmp_path / "test.jsonl"
    monkeypatch.delenv("DEPTHSTUDY_DATA")
    assert data_source(rel) == "missing"
    with pytest.raises(TaskDataMissing, match="no data folder: data_dir not given and DEPTHSTUDY_DATA not set"):
        find_data(rel)
    from depthstudy.config import show_path
    assert show_path(Path.home() / "data" / "x.csv") == str(Path("~/data/x.csv"))


# ---------------------------------------------------------------- texts for the residual analyses
@needs_data
def test_gsm8k_texts_share_the_task_reader(tmp_path):
    t = gsm8k_texts(n=None)
    rows = [json.loads(l) for l in _lines(DATA / "gsm8k" / "test.jsonl")]
    assert len(t) == 1319
    assert all(x == f"Question: {r['question'].strip()}\nAnswer: {re.sub(r'<<[^>]*>>', '', r['answer']).strip()}" for x, r in zip(t, rows))
    assert gsm8k_texts(n=2, start=5) == t[5:7] and gsm8k_texts(n=20) == t[:20]
    with pytest.raises(ValueError, match="start must be"):
        gsm8k_texts(start=-1)
    p = _broken_copy(tmp_path, DATA / "gsm8k" / "test.jsonl", "g.jsonl", 2, json.dumps({"question": " ", "answer": "#### 3"}))
    with pytest.raises(TaskDataError, match=r"g\.jsonl, line 2: field 'question' is empty"):
        gsm8k_texts(p)


def _replay(text):
    "Check one generated problem (format, every step's arithmetic, the final answer); return its number of steps."
    q, sol = text.split("\nAnswer: ")
    lines = sol.split("\n")
    assert q.startswith("Question: ") and q.endswith("?") and lines[-1].startswith("#### "), text
    steps = [re.search(r"(\d[\d*/+\-]*\d)=\$?(\d+)", l) for l in lines[:-1]]
    assert all(steps), text
    assert all(safe_eval(m.group(1)) == int(m.group(2)) for m in steps), text
    assert steps[-1].group(2) == lines[-1][5:] and "<<" not in text
    return len(steps)


def test_word_problems():
    wp = word_problems(300, seed=0)
    assert wp == word_problems(300, seed=0) and wp[:10] == word_problems(10, seed=0) and wp != word_problems(300, seed=1)
    assert len(set(wp)) == 300
    assert {_replay(t) for t in wp} == {2, 3, 4, 5, 6}
    assert all(200 <= len(t) <= 700 for t in wp)                      # ~60-200 tokens, as GSM8K items
    assert len({m for t in wp for m in re.findall(r"does ([A-Z]\w+) ", t)}) >= 20                  # many people
    assert len({re.search(r"(\w+)\?\nAnswer", t).group(1) for t in wp}) >= 8                       # many kinds of question
    for k in range(2, 7):
        assert all(_replay(t) == k for t in word_problems(30, seed=2, steps=k))
    for bad in (1, 7, 2.0, True):
        with pytest.raises(ValueError, match="steps must be a whole number from 2 to 6"):
            word_problems(3, steps=bad)
    with pytest.raises(ValueError):
        word_problems(None)


@needs_data
def test_corpus_texts_prefers_gsm8k_and_falls_back(monkeypatch, tmp_path):
    c = corpus_texts(5)
    assert c == (gsm8k_texts(n=5), "GSM8K test set (DEPTHSTUDY_DATA)") and c.task == "gsm8k"
    texts, source = corpus_texts(3, path=DATA / "gsm8k" / "test.jsonl")
    assert source == "GSM8K test set (path given)" and texts == c.texts[:3]
    assert corpus_texts(2, data_dir=DATA).source == "GSM8K test set (data_dir)"
    texts, source = corpus_texts(4, path=tmp_path / "missing.jsonl", seed=3)       # a missing file never raises
    assert texts == word_problems(4, seed=3)
    assert source.startswith("generated word problems, seed 3 (GSM8K not found: the path given is not a file")
    assert str(tmp_path) not in corpus_texts(2, data_dir=tmp_path).source         # no absolute paths in the note
    monkeypatch.delenv("DEPTHSTUDY_DATA")
    c = corpus_texts(4)
    assert c.texts == word_problems(4) and c.task == "word-problems" and "DEPTHSTUDY_DATA" in c.source and "\n" not in c.source
    assert len(corpus_texts(None).texts) == 1319
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(TaskDataError, match=r"test\.jsonl, line 1: .*####"):      # a broken file is not a missing one
        corpus_texts(2, path=bad)
