"""Property-based tests (hypothesis) of what a user can hand the `depthstudy` command (issue 28): generic task files,
`--template`, `--n`, lesson parameters and environment variables. For ANY input the command ends in

* exit 0 with a valid results table at `--out` (read back by `load_results`, the schema's columns, finite numbers), or
* exit 2 with exactly one non-empty stderr line `depthstudy CMD: error: ...` and no `--out` file,

never a traceback (no exception escapes `main`), never a write outside `--out` (and the cache folders it was given),
within a time bound (`SECONDS` per command), and never an NDIF key in any output.

`depthstudy.cli.main(argv)` runs in this process (a subprocess per example would cost a second each) with the
console script's quiet settings (no progress bars, other libraries' warnings off, depthstudy's own printed), a
temporary cache and activation store per example, DEPTHSTUDY_NO_HUB=1, and a tiny random-init model saved once
per module (`--model <folder>` loads in a fraction of a second). Every property is derandomized (CI runs the same
examples every time) with its example count fixed; `pytest --hypothesis-show-statistics` prints how many ran and
the outcomes (`exit 0` / `exit 2` events).

The properties that first found a bug (deeply nested JSON, a huge template width, nested or unhashable lesson
parameters, a key with undecodable bytes, a path under an unknown ~user) keep their minimal examples, so each bug
stays fixed."""
import contextlib, io, json, os, re, shutil, signal, string, sys, tempfile, threading, time, traceback, warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, assume, event, example, given, settings, strategies as st

SECONDS = 20          # the time bound of one command (the model here is tiny; a slow example means a hang)
HARD_SECONDS = 120    # a command still running then is interrupted and reported as a hang
SLOW_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
               HealthCheck.filter_too_much, HealthCheck.large_base_example]


PHASES = [Phase.explicit, Phase.generate, Phase.shrink]   # no explain phase: it reruns failures for a minute


def props(n: int, **kw):
    "The settings of every property: `n` examples, derandomized, no example database, a generous deadline (backstop)."
    return settings(max_examples=n, derandomize=True, database=None, deadline=timedelta(seconds=HARD_SECONDS),
                    suppress_health_check=SLOW_CHECKS, print_blob=False, phases=PHASES, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Running the command the way the console script runs it

class Hang(BaseException):
    "Raised in the main thread when a command runs past HARD_SECONDS (a BaseException: `main` must not catch it)."


@dataclass
class Outcome:
    argv: list
    rc: int | None
    out: str
    err: str
    exc: str | None        # the traceback of an exception that escaped main
    exc_type: type | None
    seconds: float

    def show(self) -> str:
        argv = [a if len(a) <= 300 else f"{a[:150]}...<{len(a)} characters>...{a[-50:]}" for a in self.argv]
        return (f"argv {argv!r}\nexit {self.rc}, {self.seconds:.1f} s\n--- stderr:\n{self.err[-3000:]}\n"
                f"--- stdout:\n{self.out[-1500:]}" + (f"\n--- escaped main:\n{self.exc[-4000:]}" if self.exc else ""))


def _to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(argv) -> Outcome:
    """`depthstudy.cli.main(argv)` with stdout/stderr captured and the console script's warning filters (other
    libraries' warnings off, depthstudy's own printed on stderr as a user would see them); interrupted by `Hang`
    after HARD_SECONDS."""
    from depthstudy.cli import main
    o, e = io.StringIO(), io.StringIO()
    rc = exc = exc_type = None
    alarm = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
             and signal.getitimer(signal.ITIMER_REAL)[0] == 0)       # never over another timer (pytest-timeout's)
    if alarm:
        def hang(*_): raise Hang(f"still running after {HARD_SECONDS} s")
        old = signal.signal(signal.SIGALRM, hang)
        signal.setitimer(signal.ITIMER_REAL, HARD_SECONDS)
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"depthstudy\.")
            warnings.showwarning = _to_stderr
            rc = main([str(a) for a in argv])
    except KeyboardInterrupt: raise
    except BaseException as x:                                  # Exception, Hang, a Rust panic (PanicException) ...
        exc, exc_type = "".join(traceback.format_exception(x)), type(x)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)
    return Outcome(list(map(str, argv)), rc, o.getvalue(), e.getvalue(), exc, exc_type, time.perf_counter() - t)


def check_table(path: Path, o: Outcome):
    "The file at `path` is a valid results table: `load_results` reads it, schema columns first, finite numbers."
    from depthstudy.results import COLUMNS, load_results
    assert path.is_file(), f"exit 0 but no --out file\n{o.show()}"
    df = load_results(path)
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS, (list(df.columns), o.show())
    assert len(df) > 0, f"an empty table\n{o.show()}"
    assert f"wrote {len(df)} rows to" in o.out, o.show()
    for c in ("n_layers", "layer", "rel_depth", "value", "ci_low", "ci_high", "n", "chance"):
        x = pd.to_numeric(df[c], errors="coerce")
        assert (x.notna() == df[c].notna()).all(), f"column {c} holds non-numbers: {df[c].tolist()[:10]}\n{o.show()}"
        assert np.isfinite(x[x.notna()]).all(), f"column {c} holds inf: {x.tolist()[:10]}\n{o.show()}"
    for c in ("model", "n_layers", "metric"):             # a summary row (e.g. depth vs hops) has no layer
        assert df[c].notna().all(), f"column {c} has missing values\n{df.head()}\n{o.show()}"
    at = df["layer"].notna()
    assert ((df.loc[at, "layer"] >= 0) & (df.loc[at, "layer"] <= df.loc[at, "n_layers"])).all(), o.show()
    assert np.allclose(df.loc[at, "rel_depth"], df.loc[at, "layer"] / df.loc[at, "n_layers"]), o.show()
    ci = df["ci_low"].notna() & df["ci_high"].notna()
    assert (df.loc[ci, "ci_low"] <= df.loc[ci, "ci_high"] + 1e-9).all(), o.show()


def check_contract(o: Outcome, cmd: str, out: Path | None = None):
    """exit 0 (and, with `out`, a valid table there) or exit 2 with one non-empty stderr line
    `depthstudy CMD: error: ...` (and no `out`); no exception out of main, no traceback text, within SECONDS."""
    assert o.exc is None, f"an exception escaped main\n{o.show()}"
    assert "Traceback" not in o.err and "Traceback" not in o.out, o.show()
    assert o.rc in (0, 2), f"exit status {o.rc}\n{o.show()}"
    event(f"exit {o.rc}")
    if o.rc == 2:
        lines = o.err.split("\n")             # a line is what a terminal shows: ended by "\n" (not by \r, \x85 ...)
        assert len(lines) == 2 and lines[1] == "" and lines[0].strip(), f"expected exactly one line on stderr\n{o.show()}"
        assert lines[0].startswith(f"depthstudy {cmd}: error: ") and lines[0][len(f"depthstudy {cmd}: error: "):].strip(), o.show()
        if out is not None: assert not out.exists(), f"refused, yet {out} was written\n{o.show()}"
    else:                        # stderr: depthstudy's own lines (warnings, where texts came from) and Python warnings
        warning = re.compile(r"^\S.*\.py:\d+: \w*Warning: |^\s")
        bad = [l for l in o.err.splitlines() if l.strip() and not l.startswith(f"depthstudy {cmd}: ") and not warning.match(l)]
        assert not bad, f"exit 0 with other text on stderr\n{o.show()}"
        if out is not None: check_table(out, o)
    assert o.seconds < SECONDS, f"took {o.seconds:.1f} s (bound {SECONDS} s)\n{o.show()}"


# ---------------------------------------------------------------------------------------------------------------
# Where a command may write: snapshots of folder trees

def tree(root: Path) -> dict:
    "{relative path: (is_dir, size, mtime_ns)} of everything under `root`, hidden files included (symlinks not followed)."
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            out[os.path.relpath(p, root)] = (n in dirs and not os.path.islink(p), s.st_size, s.st_mtime_ns)
    return out


def writes(before: dict, after: dict) -> list:
    "Paths created, changed or deleted between two `tree` snapshots (folders: created or deleted only)."
    changed = [p for p in after if p not in before or (not after[p][0] and after[p] != before[p])]
    return sorted(changed + [p for p in before if p not in after])


def within(p: str, roots) -> bool:
    return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


class Snap:
    """Before/after snapshots of an example folder (and of other folders `also`, which must stay as they are):
    `check(allowed)` asserts that no file that was there is changed or gone and that every new path lies under
    `allowed` (or is a folder made on the way to one)."""
    def __init__(self, ex: Path, *also: Path):
        self.ex, self.also = ex, also
        self.before = tree(ex)
        self.also_before = [tree(p) for p in also]

    def check(self, allowed, o: Outcome):
        roots = [os.path.abspath(os.path.join(self.ex, r)) for r in allowed]
        after = tree(self.ex)
        def ok(p):                     # under an allowed folder, or a folder made on the way to one (mkdir -p)
            full = os.path.join(str(self.ex), p)
            return within(full, roots) or (p in after and after[p][0] and any(within(r, [full]) for r in roots))
        gone = [p for p in self.before if p not in after or (not after[p][0] and after[p] != self.before[p])]
        assert not gone, f"files that were there changed or deleted: {gone[:10]}\n{o.show()}"
        bad = [p for p in writes(self.before, after) if not ok(p)]
        assert not bad, f"written outside --out and the cache folders: {bad[:10]}\n{o.show()}"
        for p, b in zip(self.also, self.also_before):
            assert writes(b, tree(p)) == [], f"{p} was changed: {writes(b, tree(p))[:10]}\n{o.show()}"


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny model on disk, the console script's quiet output

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A tiny random-init Llama (2 layers, d=16) over a byte-level tokenizer (any text works), saved as a folder."
    from depthstudy.models import tiny_model, tiny_tokenizer
    folder = tmp_path_factory.mktemp("tiny_model")
    tok = tiny_tokenizer("bytes")
    m = tiny_model("llama", n_layers=2, d=16, tokenizer=tok, max_positions=1024, name="tiny")
    m.hf.save_pretrained(folder); tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def empty_model(tmp_path_factory):
    "An empty folder given as --model: refused at once (no config.json), so a run stops before any model loads."
    return tmp_path_factory.mktemp("empty_model")


@pytest.fixture(scope="module", autouse=True)
def quiet():
    """What the console script does in a pipe, for this process: no progress bars (tqdm, transformers), transformers'
    logging at errors only. tqdm reads TQDM_DISABLE only at import, so its class is wrapped instead."""
    import tqdm.auto, transformers
    from depthstudy import executor, maps
    mp = pytest.MonkeyPatch()
    real = tqdm.auto.tqdm
    silent = lambda *a, **k: real(*a, **{**k, "disable": True})
    for mod in (tqdm.auto, executor, maps): mp.setattr(mod, "tqdm", silent)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
    yield
    transformers.logging.set_verbosity(verbosity); transformers.utils.logging.enable_progress_bar()
    mp.undo()


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch):
    "No property may start a lesson's kernel: papermill's entry point fails the test if it is reached."
    import papermill
    def refuse(*a, **k): raise AssertionError("a lesson kernel was about to start")   # not a user error: escapes main
    monkeypatch.setattr(papermill, "execute_notebook", refuse)


def fresh(base: Path, env=None):
    """(folder, MonkeyPatch context) for one example: a new working folder with its own cache, activation store,
    HOME and XDG cache (set in the environment), a user's file `notes.txt`, and the process's working directory there."""
    ex = Path(tempfile.mkdtemp(dir=base))
    (ex / "home").mkdir()
    (ex / "notes.txt").write_text("a user's file, never to be touched\n")
    (ex / "plain.txt").write_text("not a folder\n")
    mp = pytest.MonkeyPatch()
    for k in ("DEPTHSTUDY_DEBUG", "NDIF_API_KEY", "HF_TOKEN", "DEPTHSTUDY_DATA", "DEPTHSTUDY_PROGRESS"):
        mp.delenv(k, raising=False)
    mp.setenv("DEPTHSTUDY_CACHE", str(ex / "cache")); mp.setenv("DEPTHSTUDY_ACTS", str(ex / "acts"))
    mp.setenv("DEPTHSTUDY_NO_HUB", "1"); mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HOME", str(ex / "home")); mp.setenv("XDG_CACHE_HOME", str(ex / "xdg"))
    for k, v in (env or {}).items(): mp.setenv(k, v)
    mp.chdir(ex)
    return ex, mp


@contextlib.contextmanager
def in_example(base: Path, env=None):
    """One example's folder (see `fresh`); the environment and working directory are restored and the folder removed
    afterwards, and nothing may have appeared in `base` beside it. Take its `Snap` once the inputs are written."""
    outer = set(os.listdir(base))
    ex, mp = fresh(base, env)
    try: yield ex
    finally:
        mp.undo()
        shutil.rmtree(ex, ignore_errors=True)
    assert set(os.listdir(base)) - outer == set(), f"written beside the example folder: {set(os.listdir(base)) - outer}"


# ---------------------------------------------------------------------------------------------------------------
# Strategies

def no_surrogates(**kw):
    return st.characters(blacklist_categories=("Cs",), **kw)


words = st.text(no_surrogates(), min_size=1, max_size=12).filter(str.strip)
short_text = st.one_of(st.text(no_surrogates(), max_size=30),
                       st.sampled_from(["", " ", "\n", "\t", "NA", "null", "None", "nan", "{question}", "{", "}", "\\",
                                        "2 + 2 =", "é", "答", "\u200b", "\r\n", "a" * 200]))
big_ints = st.one_of(st.integers(-10**30, 10**30), st.sampled_from([2**63, -2**63 - 1, 2**64, 10**400, -10**400]))
json_scalars = st.one_of(st.none(), st.booleans(), big_ints, st.floats(), short_text)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(short_text, c, max_size=4),
                           max_leaves=12)


@st.composite
def records(draw, clean=False):
    """A generic item: well formed (distinct choices, an answer in range, optional task/meta/id of the right types) so
    that runs reach the model; unless `clean`, any field may be replaced by an arbitrary JSON value or dropped, and
    unknown keys added."""
    choices = draw(st.lists(words, min_size=2, max_size=4, unique_by=str.strip).filter(lambda cs: all(c.strip() for c in cs)))
    answer = draw(st.integers(0, len(choices) - 1) | st.lists(st.integers(0, len(choices) - 1), min_size=1,
                                                               max_size=len(choices) - 1, unique=True))
    rec = {"question": draw(short_text), "choices": choices, "answer": answer}
    if draw(st.booleans()): rec["task"] = draw(words)
    if draw(st.booleans()): rec["meta"] = draw(st.dictionaries(words, json_values, max_size=3))
    if draw(st.booleans()): rec["id"] = draw(words | st.integers())
    if clean: return rec
    for key in draw(st.lists(st.sampled_from(["question", "choices", "answer", "task", "meta", "id"]), max_size=2)):
        if draw(st.booleans()): rec.pop(key, None)
        else: rec[key] = draw(json_values | st.lists(short_text, max_size=5) | st.integers(-2, 6) | st.lists(st.integers(-1, 5), max_size=4))
    rec.update(draw(st.dictionaries(words, json_values, max_size=2)))
    return rec


@st.composite
def jsonl_files(draw):
    """The bytes of a generic task file: half of them clean (records only, with blank lines, CRLF or a BOM), the
    others hostile: records with wrong fields, other JSON values, raw bytes, cut lines, or any bytes at all."""
    if draw(st.integers(0, 9)) == 0: return draw(st.binary(max_size=300))
    clean = draw(st.booleans())
    lines = []
    for _ in range(draw(st.integers(1 if clean else 0, 7))):
        kinds = ["record"] * 4 + ["blank"] if clean else ["record"] * 6 + ["value", "blank", "bytes", "cut"]
        kind = draw(st.sampled_from(kinds))
        if kind == "record": line = json.dumps(draw(records(clean)), ensure_ascii=draw(st.booleans())).encode()
        elif kind == "value": line = json.dumps(draw(json_values)).encode()
        elif kind == "blank": line = draw(st.sampled_from([b"", b" ", b"\t", b"\r"]))
        elif kind == "bytes": line = draw(st.binary(max_size=40))
        else:
            full = json.dumps(draw(records())).encode()
            line = full[:draw(st.integers(0, len(full)))]
        lines.append(line)
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = eol.join(lines) + (eol if draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.integers(0, 9)) == 0 else b"") + data


GOOD_ITEMS = [dict(question="2 + 2 =", choices=["4", "5", "22"], answer=0, meta=dict(topic="sums", lang="en")),
              dict(question="The capital of France is", choices=["Paris", "Rome"], answer=0, meta=dict(topic="capitals", lang="en")),
              dict(question="Das Gegenteil von heiß ist", choices=["kalt", "warm", "nass"], answer=[0], meta=dict(topic="words", lang="de")),
              dict(question="3 * 3 =", choices=["9", "6"], answer=0, task="sums2", meta=dict(topic="sums", lang="en"))]

template_pieces = st.one_of(
    st.sampled_from(["{question}", "{", "}", "{{", "}}", "\\", "\\n", "\\t", "\\\\", "\\x41", "\\u00e9", "\\{", "{topic}",
                     "{lang}", "{choice}", "{answer}", "{choices}", "{}", "{0}", "{question!r}", "{question!s}",
                     "{question!a}", "{question!x}", "{question:.3}", "{question:d}", "{question:,}", "{question.upper}",
                     "{question[0]}", "{ question }", "{question:{topic}}", "{question}}", "{{question}", "{{{question}}}",
                     "Question:", "Answer:", "Q:", " ", "\t", "\n", "\r", "é", "答", "\u200b", "%s", "$question",
                     "{__class__}", "{question.__class__.__init__.__globals__}"]),
    st.integers(0, 10**10).map(lambda w: f"{{question:>{w}}}"),  # a width of 1e10 once exhausted memory: refused now
    st.text(no_surrogates(), max_size=5))
plain_text = st.text(no_surrogates(blacklist_characters="{}\\"), max_size=20)
templates = st.one_of(
    st.text(no_surrogates(), max_size=40),                                     # anything at all
    st.lists(template_pieces, max_size=8).map("".join),                        # braces, escapes, fields, specs
    st.builds(lambda a, b, c: a + "{question}" + b + c, plain_text,            # mostly valid: text around {question}
              st.sampled_from(["", "\\n", "\\t", "\\\\", "{{", "}}", " {topic}", "\\n{lang}: "]), plain_text))


# ---------------------------------------------------------------------------------------------------------------
# 1. generic task files

@props(120)
@given(data=jsonl_files(), n=st.none() | st.integers(1, 8),
       extra=st.sampled_from([[], [], ["--mode", "probe"], ["--length-norm"], ["--faithful"], ["--seed", "3"]]))
@example(data=b"", n=None, extra=[])
@example(data=b'{"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0}\n', n=None, extra=[])
@example(data=b'{"question": "caf\xe9?", "choices": ["oui", "non"], "answer": 0}\n', n=1, extra=[])
@example(data=b'{"question": "q", "choices": ["a", "b"], "answer": ' + b"1" * 5000 + b"}\n", n=None, extra=[])
@example(data=b'{"question": "q", "choices": ["a", "b"], "answer": 1e999}\n{"question": "q", "choices": ["a", "b"], "answer": NaN}\n',
         n=None, extra=[])
def test_generic_files(base, tiny, data, n, extra):
    "Any generic:FILE: a valid table or one line; nothing written but --out, the model folder untouched."
    with in_example(base) as ex:
        f = ex / "items.jsonl"; f.write_bytes(data)
        out = ex / "out.csv"
        snap = Snap(ex, tiny)
        o = run_cli(["mc", "--task", f"generic:{f}", "--model", tiny, "--out", out, *([] if n is None else ["--n", n]), *extra])
        check_contract(o, "mc", out)
        snap.check(["cache", "acts", "out.csv"], o)


# 1b. generic files with deeply nested JSON (known bug)

@props(5)
@given(depth=st.integers(1_000, 200_000), where=st.sampled_from(["question", "meta", "line"]))
def test_generic_files_deep_nesting(base, empty_model, depth, where):
    nested = "[" * depth + "]" * depth
    line = nested if where == "line" else \
        json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0, where: "X"}).replace('"X"', nested)
    with in_example(base) as ex:
        f = ex / "items.jsonl"; f.write_text(line + "\n")
        snap = Snap(ex)
        o = run_cli(["mc", "--task", f"generic:{f}", "--model", empty_model, "--out", ex / "out.csv"])
        check_contract(o, "mc", ex / "out.csv")
        snap.check(["cache", "acts", "out.csv"], o)


# ---------------------------------------------------------------------------------------------------------------
# 2. templates

@props(90)
@given(template=templates, form=st.sampled_from(["separate", "equals"]), keep_header=st.booleans())
@example(template="", form="separate", keep_header=False)
@example(template="Question: {question}\\nAnswer:", form="separate", keep_header=False)
@example(template="-{question}", form="separate", keep_header=False)
@example(template="{question:>99999999999999999999}", form="equals", keep_header=False)
def test_templates(base, tiny, template, form, keep_header):
    "Any --template with a small generic file: a valid table or one line."
    with in_example(base) as ex:
        f = ex / "items.jsonl"; f.write_text("".join(json.dumps(r) + "\n" for r in GOOD_ITEMS))
        out = ex / "out.csv"
        opt = ["--template", template] if form == "separate" else [f"--template={template}"]
        snap = Snap(ex, tiny)
        o = run_cli(["mc", "--task", f"generic:{f}", "--model", tiny, "--out", out, *opt, *(["--keep-header"] if keep_header else [])])
        check_contract(o, "mc", out)
        snap.check(["cache", "acts", "out.csv"], o)


@contextlib.contextmanager
def address_space_cap(extra: int = 3 * 2**30):
    """Lower this process's address-space limit to what it maps now plus `extra` bytes, so that a runaway allocation
    fails at once with MemoryError instead of taking the machine's memory; restored on leaving."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh: mapped = int(fh.read().split()[0]) * resource.getpagesize()
    cap = min([mapped + extra] + [v for v in (soft, hard) if v != resource.RLIM_INFINITY])   # never raised
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try: yield
    finally: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux (/proc) to cap memory safely")
@props(6)
@given(width=st.integers(10**10, 10**18), align=st.sampled_from([">", "<", "^", ""]))
def test_template_format_width(base, tiny, width, align):
    "A --template whose field asks for a huge width is refused in one line (run under a memory cap, for safety)."
    with in_example(base) as ex:
        f = ex / "items.jsonl"; f.write_text("".join(json.dumps(r) + "\n" for r in GOOD_ITEMS))
        snap = Snap(ex, tiny)
        with address_space_cap():
            o = run_cli(["mc", "--task", f"generic:{f}", "--model", tiny, "--out", ex / "out.csv",
                         "--template", f"Q: {{question:{align}{width}}}\\nA:"])
        check_contract(o, "mc", ex / "out.csv")
        snap.check(["cache", "acts", "out.csv"], o)


# ---------------------------------------------------------------------------------------------------------------
# 3. counts (--n)

count_texts = st.one_of(
    st.integers(-10**15, 10**15).map(str), st.integers(1, 40).map(str),
    st.sampled_from(["0", "-0", "+5", " 7 ", "\t3\n", "1_000", "0x10", "1e3", "2.5", "3.0", "", " ", "inf", "nan", "NaN",
                     "１２", "٣", "1" * 5000, "9" * 4300, str(10**12), str(2**63), "-1", "--1", "-x", "=", "5 6", "None"]),
    st.floats().map(str), st.text(no_surrogates(), max_size=12))


@props(60)
@given(cmd=st.sampled_from([["mc", "--task", "calculation"], ["mc", "--task", "facts"], ["depth", "--analysis", "hops"]]),
       n=count_texts, form=st.sampled_from(["separate", "equals"]))
@example(cmd=["mc", "--task", "calculation"], n=str(10**12), form="separate")
@example(cmd=["depth", "--analysis", "hops"], n=str(10**12), form="separate")
@example(cmd=["mc", "--task", "facts"], n=str(10**12), form="separate")
def test_counts(base, empty_model, cmd, n, form):
    """Any --n: refused in one line (naming --n) or accepted, the items generated within the time bound, and the run
    then stopped by --model (an empty folder) in one line before any model loads."""
    from depthstudy.cli import positive_int
    with in_example(base) as ex:
        out = ex / "out.csv"
        snap = Snap(ex)
        o = run_cli([*cmd, *(["--n", n] if form == "separate" else [f"--n={n}"]), "--model", empty_model, "--out", out])
        check_contract(o, cmd[0], out)
        assert o.rc == 2, o.show()                                # the empty model folder is always refused
        try: positive_int(n)
        except Exception: assert "argument --n" in o.err, f"a refused --n is not named\n{o.show()}"
        event("refused: --n" if "argument --n" in o.err else "refused: the model" if "config.json" in o.err
              else "refused: too many items" if "asked for" in o.err else "refused: other")
        snap.check(["cache", "acts", "out.csv"], o)
        assert not (ex / "cache" / "models").exists(), f"a model was prepared\n{o.show()}"


@props(12)
@given(case=st.one_of(st.tuples(st.sampled_from([["mc", "--task", "calculation"], ["mc", "--task", "facts"],
                                                 ["mc", "--task", "facts", "--mode", "probe"]]), st.integers(1, 12)),
                      st.tuples(st.just(["depth", "--analysis", "hops"]), st.integers(1, 2))))   # 7 item families per n
def test_counts_run_to_a_table(base, tiny, case):
    "Small accepted --n run to the end on the tiny model: a valid table or one line."
    cmd, n = case
    with in_example(base) as ex:
        out = ex / "out.csv"
        snap = Snap(ex, tiny)
        o = run_cli([*cmd, "--n", n, "--model", tiny, "--out", out])
        check_contract(o, cmd[0], out)
        snap.check(["cache", "acts", "out.csv"], o)


# ---------------------------------------------------------------------------------------------------------------
# 4. lesson parameters

def _lesson_params():
    from depthstudy.course import list_lessons
    return [(l["name"], k, v["type"]) for l in list_lessons() for k, v in l["parameters"].items()]


LESSON_PARAMS = _lesson_params()
SCALAR_PARAMS = [p for p in LESSON_PARAMS if p[2] not in ("list", "dict", "tuple")]
COLLECTION_PARAMS = [p for p in LESSON_PARAMS if p[2] in ("list", "dict", "tuple")]

literal_texts = st.one_of(
    st.text(no_surrogates(), max_size=30),
    json_values.map(json.dumps),
    st.sampled_from(["true", "True", "yes", "on", "0", "1", "-1", "2.0", "1e309", "-inf", "nan", "None", "null", "[]",
                     "{}", "()", "[1, 2]", "['a']", "[\"facts\"]", "(1,)", "{1: 2}", "{'a': 1}", "[1, 'a']", " 5 ",
                     "1_0", "0x1F", "١", "\r\n", "''", '""', "[" * 30, "{" * 30, "1" * 5000, "b'x'", "...", "__import__('os')"]))
# values built from literals that parse (JSON or Python) but are no valid value of the parameter: nested lists and
# sets, wrong element types, unhashable keys, deep nesting
collection_texts = st.one_of(
    literal_texts,
    st.sampled_from(["{[]: 1}", "{1, []}", "{'a': [1]}", "[[1]]", "[{}]", "['a', 1]", "[None]", "[1.5]", "[True]",
                     "[[]]", "{'models': []}", "[1, [2]]"]),
    st.integers(1, 100_000).map(lambda d: "[" * d + "]" * d))


def check_validation(lesson, name, value):
    """`validate_parameters(lesson, {name: value})` returns a dict holding `name`, or raises ValueError/TypeError
    whose message names `name`; any other exception fails."""
    from depthstudy.course import validate_parameters
    try: got = validate_parameters(lesson, {name: value})
    except (ValueError, TypeError) as e:
        event(f"refused ({type(e).__name__})")
        assert name in str(e), f"{type(e).__name__} does not name the parameter {name!r}: {e}"
        return False
    event("accepted")
    assert isinstance(got, dict) and set(got) == {name}, got
    return True


@props(200)
@given(param=st.sampled_from(SCALAR_PARAMS), value=literal_texts)
def test_lesson_parameters_scalars(param, value, monkeypatch):
    "Every int/float/bool/str parameter of every lesson, any string: a dict, or ValueError/TypeError naming it."
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    check_validation(param[0], param[1], value)


@props(100)
@given(param=st.sampled_from(COLLECTION_PARAMS), value=collection_texts)
@example(param=("02_depth_efficiency", "chain_hops", "list"), value="['a']")
@example(param=("01_bigger_deeper", "models", "list"), value="{[]: 1}")
def test_lesson_parameters_collections(param, value, monkeypatch):
    "Every list/dict parameter of every lesson, any string: a dict, or ValueError/TypeError naming it."
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    check_validation(param[0], param[1], value)


def refused(lesson, name, value) -> bool:
    "Whether lesson `lesson` refuses `value` for `name` (raises anything) in this environment."
    from depthstudy.course import validate_parameters
    try: validate_parameters(lesson, {name: value})
    except (ValueError, TypeError): return True
    except Exception: return True             # an escaping exception is refused too (and reported by the run)
    return False


def check_run_refused(base, param, value, form):
    lesson, name, _ = param
    with in_example(base) as ex:
        assume(refused(lesson, name, value))  # a value a lesson accepts would start a kernel (a minute): not here
        p = ["-p", name, value] if form == "separate" else ["-p", f"{name}={value}"]
        snap = Snap(ex)
        o = run_cli(["run", lesson[:2] if form == "equals" else lesson, *p, "--out", ex / "runs"])
        check_contract(o, "run")
        assert o.rc == 2, o.show()
        snap.check(["cache", "acts"], o)
        assert not (ex / "runs").exists(), f"refused, yet --out was created\n{o.show()}"


@props(40)
@given(param=st.sampled_from(SCALAR_PARAMS), value=literal_texts, form=st.sampled_from(["separate", "equals"]))
def test_run_refuses_bad_parameters(base, param, value, form):
    "`depthstudy run LESSON -p NAME VALUE` with a value the lesson refuses: one line, nothing written, no kernel."
    check_run_refused(base, param, value, form)


@props(20)
@given(param=st.sampled_from(COLLECTION_PARAMS), value=collection_texts, form=st.sampled_from(["separate", "equals"]))
@example(param=("02_depth_efficiency", "chain_hops", "list"), value="[" * 5000 + "]" * 5000, form="equals")
def test_run_refuses_bad_collection_parameters(base, param, value, form):
    check_run_refused(base, param, value, form)


# ---------------------------------------------------------------------------------------------------------------
# 5. environment variables

env_texts = st.one_of(
    st.text(no_surrogates(blacklist_characters="\x00"), max_size=30),
    st.binary(max_size=30).filter(lambda b: b"\x00" not in b).map(os.fsdecode),     # any bytes a shell can export
    st.sampled_from(["", " ", "0", "1", "false", "OFF", " no ", "yes", "true", "\r", "'", '"', "''", "\"\"", "\\"]))

path_components = st.one_of(
    st.text(no_surrogates(blacklist_characters="/\x00"), min_size=1, max_size=12),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b).map(os.fsdecode),
    st.sampled_from([".", " ", "-", "~", "plain.txt", "notes.txt", "$HOME", "*", "\r", "\n", "x" * 300, "é", "答"])
).filter(lambda c: c != "..")        # never above the example folder


@st.composite
def env_paths(draw):
    """A value for DEPTHSTUDY_CACHE / DEPTHSTUDY_ACTS inside the example folder: relative (to the working directory),
    absolute, `~/...` (HOME is the example's), under a file, empty or blank. `{ex}` stands for the folder."""
    prefix = draw(st.sampled_from(["", "./", "~/", "{ex}/", "plain.txt/", "notes.txt"]))
    parts = draw(st.lists(path_components, max_size=3))
    v = prefix + "/".join(parts) + draw(st.sampled_from(["", "/"]))
    return v


def path_root(v: str, ex: Path) -> str:
    "Where the variable's value points, as depthstudy reads it (relative to the working directory, the example folder)."
    return os.path.abspath(os.path.join(ex, os.path.expanduser(v.replace("{ex}", str(ex)))))


key_texts = st.one_of(st.text(no_surrogates(blacklist_characters="\x00"), min_size=8, max_size=40),
                      st.text(string.ascii_letters + string.digits + "-_.", min_size=8, max_size=40))

ENV_COMMANDS = [["cache", "info"], ["cache", "clear"], ["models"], ["doctor", "--offline"],
                ["mc", "--task", "facts", "--model", "<empty>"]]


def key_forms(value: str) -> list:
    """The forms of an NDIF key to look for in outputs: `secret_forms`, or, for a key `secret_forms` cannot encode
    (undecodable bytes, see test_key_with_undecodable_bytes), its core and the core's JSON and Python escapes."""
    from depthstudy.ndif import key_core, secret_forms
    try: return secret_forms(value)
    except UnicodeError:
        core = key_core(value)
        return [core, json.dumps(core)[1:-1], repr(core)[1:-1]] if len(core) >= 8 else []


@props(150)
@given(cmd=st.sampled_from(ENV_COMMANDS), cache=env_paths() | st.just(None), acts=env_paths() | st.just(None),
       debug=st.none() | st.sampled_from(["", "0", "false", " OFF ", "no", "off\n"]) | env_texts,
       key=st.none() | env_texts | key_texts)
@example(cmd=["cache", "info"], cache="plain.txt", acts=None, debug=None, key=None)
@example(cmd=["cache", "clear"], cache=None, acts="{ex}", debug=None, key=None)
@example(cmd=["mc", "--task", "facts", "--model", "<empty>"], cache="plain.txt/c", acts=None, debug="1", key=None)
@example(cmd=["doctor", "--offline"], cache=None, acts=None, debug=None, key=' "sk-abcdef123456"\r\n')
@example(cmd=["cache", "info"], cache=" ", acts="\r", debug=" off ", key="short")
def test_environment(base, empty_model, cmd, cache, acts, debug, key):
    """Any DEPTHSTUDY_CACHE, DEPTHSTUDY_ACTS, DEPTHSTUDY_DEBUG, NDIF_API_KEY for a cheap command: exit 0, or exit 2 in
    one line (with DEPTHSTUDY_DEBUG on, a user error may instead show its traceback, as documented); writes only in
    the cache folders named; the key in none of its forms in any output or file."""
    from depthstudy.cli import _user_errors
    from depthstudy.config import env_flag
    with in_example(base) as ex:
        forms = key_forms(key) if key is not None else []
        shown = [str(ex), str(empty_model)] + [path_root(v, ex) for v in (cache, acts) if v] + [v for v in (cache, acts, debug) if v]
        assume(not any(f in v for f in forms for v in shown))  # a key that is also a path given is printed as that path
        env = {"DEPTHSTUDY_CACHE": cache, "DEPTHSTUDY_ACTS": acts, "DEPTHSTUDY_DEBUG": debug, "NDIF_API_KEY": key}
        snap = Snap(ex)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                if v is None: mp.delenv(k, raising=False)
                else: mp.setenv(k, v.replace("{ex}", str(ex)))
            o = run_cli([str(empty_model) if a == "<empty>" else a for a in cmd])
            debug_on = env_flag("DEPTHSTUDY_DEBUG")
        if o.exc is not None and debug_on:
            assert issubclass(o.exc_type, _user_errors()), f"DEPTHSTUDY_DEBUG showed a traceback of a bug\n{o.show()}"
            event("debug traceback")
        else: check_contract(o, cmd[0])
        c = path_root(cache, ex) if cache else str(ex / "xdg" / "depthstudy")
        a = path_root(acts, ex) if acts else os.path.join(c, "acts")
        snap.check([c, a], o)
        if forms: event("a key of 8+ characters set: checked")
        for form in forms:
            assert form not in o.out and form not in o.err, f"the NDIF key is in the output ({form!r})\n{o.show()}"
            for p in ex.rglob("*"):
                if p.is_file(): assert os.fsencode(form) not in p.read_bytes(), f"the NDIF key is in {p}"


def check_key_refused(base, key, pad, quote, param):
    from depthstudy.ndif import key_core
    value = f"{quote}{key}{quote}{pad}"
    assume(len(key_core(value)) >= 8 and key_core(value) in value)   # shorter is no key: the lesson would run
    with in_example(base, env={"NDIF_API_KEY": value}) as ex:
        lesson, name = param
        snap = Snap(ex)
        o = run_cli(["run", lesson, "-p", f"{name}={value}", "--out", ex / "runs"])
        check_contract(o, "run")
        assert o.rc == 2 and "holds the NDIF key" in o.err, o.show()
        for form in key_forms(value):
            assert form not in o.err and form not in o.out, f"the key is in the message ({form!r})\n{o.show()}"
        snap.check(["cache", "acts"], o)


key_params = st.sampled_from([("00_first_look", "prompt"), ("00_first_look", "model"), ("00_first_look", "top_k"),
                              ("02_depth_efficiency", "data_dir"), ("01_bigger_deeper", "models")])


@props(30)
@given(key=key_texts, pad=st.sampled_from(["", " ", "\r\n", "\n", "\t"]), quote=st.sampled_from(["", "'", '"']), param=key_params)
@example(key="sk-abcdef123456", pad="\r\n", quote='"', param=("00_first_look", "prompt"))
def test_key_never_passed_to_a_lesson(base, key, pad, quote, param):
    """With NDIF_API_KEY set to any value (a core of at least 8 characters), `depthstudy run LESSON -p NAME <the key
    as set, padded or quoted>` is refused in one line that does not hold the key, and nothing is written."""
    check_key_refused(base, key, pad, quote, param)


@props(8)
@given(key=st.binary(min_size=8, max_size=30).filter(lambda b: b"\x00" not in b).map(os.fsdecode)
       .filter(lambda k: any("\udc80" <= ch <= "\udcff" for ch in k)),
       pad=st.sampled_from(["", "\r\n"]), quote=st.just(""), param=key_params)
def test_key_with_undecodable_bytes(base, key, pad, quote, param):
    check_key_refused(base, key, pad, quote, param)


@props(12)
@given(user=st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10).map(lambda u: "nosuchuser" + u),
       where=st.sampled_from(["DEPTHSTUDY_CACHE", "DEPTHSTUDY_ACTS", "--out", "--data", "--model", "generic:"]))
def test_unknown_user_in_a_path(base, empty_model, user, where):
    with in_example(base) as ex:
        p = f"~{user}/x"
        argv = ["mc", "--task", "facts", "--model", empty_model]
        if where.startswith("DEPTHSTUDY_"): os.environ[where] = p; argv = ["cache", "info"]
        elif where == "--out": argv += ["--out", p + ".csv"]
        elif where == "--data": argv = ["mc", "--task", "truthfulqa-mc1", "--data", p + ".csv", "--model", empty_model]
        elif where == "--model": argv = ["mc", "--task", "facts", "--model", p]
        else: argv = ["mc", "--task", f"generic:{p}.jsonl", "--model", empty_model]
        snap = Snap(ex)
        o = run_cli(argv)
        check_contract(o, argv[0])
        snap.check(["cache", "acts"], o)
