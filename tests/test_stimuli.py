"Stimuli for study B (depthstudy.stimuli): determinism, uniqueness, labels, groups."
import math
import pytest
from depthstudy.stimuli import stimuli, LEVELS, CONTROL_LEVELS, Stimulus, NOUNS, RELATIONS, article, connectives, CONNECTIVES


@pytest.mark.parametrize("level", LEVELS + CONTROL_LEVELS)
def test_deterministic_per_seed_and_unique(level):
    a, b = stimuli(level, seed=3), stimuli(level, seed=3)
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.labels for s in a] == [s.labels for s in b]
    texts = [s.text for s in a]
    assert len(set(texts)) == len(texts), "duplicate texts"
    assert [s.text for s in stimuli(level, seed=4)] != texts  # the seed matters (order at least)
    assert all(isinstance(s, Stimulus) and s.level == level and s.items for s in a)
    assert all(set(s.labels) == set(a[0].labels) for s in a)  # every stimulus has every label


@pytest.mark.parametrize("level", LEVELS + CONTROL_LEVELS)
def test_every_label_varies(level):
    ss = stimuli(level)
    for name in ss[0].labels:
        assert len({s.labels[name] for s in ss}) >= 2, name


def test_sizes():
    assert len(stimuli("items")) >= 200
    assert len(stimuli("documents")) >= 120
    assert len(stimuli("relations")) >= 150 and len(stimuli("analogies")) >= 120
    assert len(stimuli("items", n=7)) == 7


def test_items_labels():
    by = {s.items[0]: s for s in stimuli("items")}
    assert by["apple"].text == "An apple" and by["apple"].labels["edible"] == 1
    assert by["elephant"].labels["bigger_than_person"] == 1 and by["mouse"].labels["bigger_than_person"] == 0
    assert by["hammer"].labels["man_made"] == 1 and by["dog"].labels["living"] == 1
    assert by["elephant"].labels["log_mass"] > by["mouse"].labels["log_mass"] + 4
    assert isinstance(by["ant"].labels["log_size"], float) and math.isfinite(by["ant"].labels["log_size"])
    for s in by.values():  # the derived binary agrees with the continuous size (1.8 m threshold)
        size = 10 ** s.labels["log_size"]
        if size > 1.85: assert s.labels["bigger_than_person"] == 1, s.text
        if size < 1.75: assert s.labels["bigger_than_person"] == 0, s.text


def test_relations_reuse_items_and_cover_labels():
    ss = stimuli("relations")
    assert {s.labels["relation"] for s in ss} == {"part_whole", "same_category", "object_function", "object_location", "unrelated"}
    assert all(len(s.items) == 2 for s in ss)
    counts = {}
    for s in ss:
        for it in s.items: counts[it] = counts.get(it, 0) + 1
    assert max(counts.values()) >= 3  # the same item appears in several pairs
    for s in ss:  # the text names both items
        assert all(it in s.text for it in s.items)
        assert s.labels["related"] == int(s.labels["relation"] != "unrelated")


def test_analogies_valid_and_foils():
    ss = stimuli("analogies")
    valid = [s for s in ss if s.labels["valid"] == 1]
    assert 0.3 < len(valid) / len(ss) < 0.7
    pairs = {r: set(v) for r, v in RELATIONS.items()}
    for s in ss:
        a, b, c, d = s.items
        assert s.text == f"{a.capitalize()} is to {b} as {c} is to {d}"
        rel = pairs[s.labels["relation"]]
        assert (a, b) in rel
        assert ((c, d) in rel) == bool(s.labels["valid"])  # an invalid one has a foil for d
        if not s.labels["valid"]:
            assert any(NOUNS[d]["category"] == NOUNS[d2]["category"] for c2, d2 in rel if c2 == c)


def test_documents():
    ss = stimuli("documents")
    assert {s.labels["cause_effect"] for s in ss} == {0, 1}
    assert len({s.labels["topic"] for s in ss}) >= 4
    for s in ss:
        n_sent = s.text.count(". ") + 1
        assert 2 <= n_sent <= 4 and "{" not in s.text


def test_documents_carry_cause_effect_without_connectives():
    from depthstudy.config import read_data
    rows = read_data("stimuli/documents.tsv")
    assert {r["cause_effect"] for r in rows} == {"0", "1"}
    for r in rows:                                     # neither class uses a word that announces a cause
        assert not connectives(r["template"]), (r["template"], connectives(r["template"]))
    for s in stimuli("documents"):
        assert not connectives(s.text), s.text
    assert connectives("The road was icy, so the bus was late") == ["so"]
    assert connectives("As a result, it failed. Since then: nothing") == ["since", "as a result", "result", "then"]
    assert connectives("also the afternoon, sober and resulting") == []          # whole words only
    assert {"because", "so", "as a result", "since"} <= set(CONNECTIVES)
    # both classes are told in the past tense: an earlier set described the non-causal scenes in the present
    # tense ("The cafe serves ..."), and a probe could read the class from the tense alone
    import re
    present = [r["template"] for r in rows if re.search(r"\b(is|are|has|have|does|opens|serves|makes|likes)\b", r["template"])]
    assert not present, present
    # balanced classes per topic
    per = {}
    for r in rows: per.setdefault(r["topic"], []).append(int(r["cause_effect"]))
    assert all(sum(v) * 2 == len(v) for v in per.values()), per


def test_balanced_analogies_need_both_pairs():
    """Every second pair (and every first pair) completes as many valid as invalid analogies, so validity cannot be
    read from one pair; an analogy is valid exactly when both pairs are true pairs of the same relation."""
    ss = stimuli("analogies_balanced")
    assert len(ss) >= 200 and all(s.level == "analogies_balanced" for s in ss)
    rel_of = {p: r for r, ps in RELATIONS.items() for p in ps}
    second, first = {}, {}
    for s in ss:
        a, b, c, d = s.items
        assert s.text == f"{a.capitalize()} is to {b} as {c} is to {d}" and len(set(s.items)) == 4
        assert (a, b) in rel_of and (c, d) in rel_of                           # every pair is a true pair
        assert s.labels["relation"] == rel_of[(c, d)]
        assert s.labels["valid"] == int(rel_of[(a, b)] == rel_of[(c, d)])
        second.setdefault((c, d), []).append(s.labels["valid"]); first.setdefault((a, b), []).append(s.labels["valid"])
    assert all(sum(v) * 2 == len(v) for v in second.values())
    assert all(sum(v) * 2 == len(v) for v in first.values())
    # the original level, by contrast, is decided by its second pair
    orig = {}
    for s in stimuli("analogies"): orig.setdefault(s.items[2:], set()).add(s.labels["valid"])
    assert all(len(v) == 1 for v in orig.values())
    # a noun belongs to one block: stimuli sharing a noun share all their nouns' block
    from depthstudy.probes import item_folds
    g = [s.items for s in ss]
    folds = item_folds(g, cv=5)
    assert sorted(i for _, te in folds for i in te) == list(range(len(ss)))
    assert all(len(tr) >= 0.6 * (len(ss) - len(te)) for tr, te in folds)     # blocks: nothing to purge


def test_bad_args_are_clear():
    with pytest.raises(ValueError, match="unknown level"):
        stimuli("sentences")
    with pytest.raises(ValueError, match="positive"):
        stimuli("items", n=0)
    assert article("owl") == "An owl"
