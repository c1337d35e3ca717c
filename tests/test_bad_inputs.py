"""Every mistake a user can make through the real `depthstudy` command (a subprocess, as a shell runs it) ends in
ONE non-empty line on stderr that names the problem, exit status 2 and no traceback; and the mistakes that can be
seen before a model loads are caught before it loads (checked: a fresh DEPTHSTUDY_CACHE gets no `models/` folder,
and the command ends within seconds)."""
import os, re, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
import pytest

EXE = str(Path(sys.executable).parent / "depthstudy") if (Path(sys.executable).parent / "depthstudy").exists() \
    else shutil.which("depthstudy")                       # the installed console script
EARLY_SECONDS = 20                                         # a mistake caught before the model loads ends sooner
JOBS = int(os.environ.get("DEPTHSTUDY_TEST_JOBS", "2"))   # cases run concurrently (each is a separate process)
LONG_PROMPT = " ".join(["a"] * 40000)                      # 40k tokens; SmolLM2's context is 8192


@dataclass
class Case:
    id: str
    argv: list                 # <name> is replaced by the path `name` of the `files` fixture
    expect: str                # a regex the one stderr line must match
    early: bool = True         # caught before any model loads
    env: dict = field(default_factory=dict)   # overrides; None unsets a variable
    needs: str = ""            # a condition of this machine the case needs: "no_key", "no_cuda", "no_mps", "proc"


C = Case
CASES = [
    # argparse: one line, with a pointer to --help
    C("unknown_command", ["frobnicate"], r"^depthstudy: error: argument COMMAND: invalid choice: 'frobnicate'.*see depthstudy --help"),
    C("mc_missing_task", ["mc"], r"^depthstudy mc: error: .*required: --task.*see depthstudy mc --help"),
    C("mc_unknown_option", ["mc", "--task", "facts", "--tsk", "x"], r"^depthstudy mc: error: unrecognized arguments: --tsk x"),
    C("mc_bad_mode", ["mc", "--task", "facts", "--mode", "probes"], r"argument --mode: invalid choice: 'probes'"),
    C("hierarchy_bad_level", ["hierarchy", "--level", "words"], r"argument --level: invalid choice: 'words'"),
    C("depth_bad_analysis", ["depth", "--analysis", "everything"], r"argument --analysis: invalid choice: 'everything'"),
    C("cache_bad_action", ["cache", "wipe"], r"^depthstudy cache: error: argument action: invalid choice: 'wipe'"),
    C("mc_seed_not_int", ["mc", "--task", "facts", "--seed", "x"], r"argument --seed: invalid int value: 'x'"),
    C("run_p_missing", ["run", "00_first_look", "-p"], r"^depthstudy run: error: argument -p/--param: expected at least one argument"),
    # counts: positive whole numbers only
    C("mc_n_zero", ["mc", "--task", "calculation", "--n", "0"], r"argument --n: must be at least 1, got 0"),
    C("mc_n_negative", ["mc", "--task", "facts", "--n", "-5"], r"argument --n: must be at least 1, got -5"),
    C("depth_n_not_a_number", ["depth", "--analysis", "contrib", "--n", "abc"], r"argument --n: expected a whole number .*'abc'"),
    C("depth_hops_n_zero", ["depth", "--analysis", "hops", "--n", "0"], r"argument --n: must be at least 1"),
    C("map_n_zero", ["map", "--target", "gemma3-270m", "--n", "0"], r"^depthstudy map: error: argument --n: must be at least 1"),
    C("hierarchy_n_fraction", ["hierarchy", "--level", "items", "--n", "2.5"], r"argument --n: expected a whole number .*'2.5'"),
    # --template: fields, braces, escapes
    C("template_unknown_field", ["mc", "--task", "facts", "--template", "Q: {question} ({topic})"], r"uses \{topic\}.*no such field"),
    C("template_stray_open_brace", ["mc", "--task", "facts", "--template", "Q: {question} {"], r"not a valid format string.*Single '\{'"),
    C("template_stray_close_brace", ["mc", "--task", "facts", "--template", "Q: {question} }"], r"not a valid format string.*Single '\}'"),
    C("template_positional_field", ["mc", "--task", "facts", "--template", "Q: {} {question}"], r"has the field \{\}.*named fields"),
    C("template_bad_escape", ["mc", "--task", "facts", "--template", r"Q: {question}\x41"], r"--template has the escape '\\x'.*only \\n"),
    C("template_lone_backslash", ["mc", "--task", "facts", "--template", "Q: {question}\\"], r"--template has a lone '\\' at the end"),
    C("template_no_question", ["mc", "--task", "facts", "--template", "no placeholder"], r"--template must contain \{question\}"),
    # --out / output folders: checked with a probe file before any work
    C("out_is_a_folder", ["mc", "--task", "facts", "--out", "<empty_dir>"], r"--out .*empty is a folder: give a file path in it"),
    C("out_under_a_file", ["mc", "--task", "facts", "--out", "<plain_file>/r.csv"], r"cannot write --out .*plain\.txt is a file, not a folder"),
    C("out_not_writable", ["depth", "--analysis", "contrib", "--out", "/proc/depthstudy-test/x.csv"], r"cannot write --out /proc/depthstudy-test/x\.csv: files cannot be created in /proc", needs="proc"),
    C("run_out_is_a_file", ["run", "00_first_look", "--out", "<plain_file>"], r"cannot write to --out .*plain\.txt: .* is a file, not a folder"),
    # task data
    C("unknown_task", ["mc", "--task", "no-such-task"], r"unknown task 'no-such-task'; known: calculation"),
    C("unknown_task_prefix", ["mc", "--task", "csv:<plain_file>"], r"unknown task prefix 'csv'"),
    C("generated_task_with_data", ["mc", "--task", "facts", "--data", "<plain_file>"], r"task 'facts' is generated and reads no file"),
    C("missing_data_file", ["mc", "--task", "truthfulqa-mc1", "--data", "<empty_dir>/missing.csv"], r"missing\.csv: no such file \(the data file of task 'truthfulqa-mc1'\)"),
    C("depth_missing_data_file", ["depth", "--analysis", "contrib", "--data", "<empty_dir>/test.jsonl"], r"test\.jsonl.*not found"),
    C("depth_hops_with_data", ["depth", "--analysis", "hops", "--data", "<plain_file>"], r"--data is not used by --analysis hops"),
    C("generic_missing_file", ["mc", "--task", "generic:<empty_dir>/items.jsonl"], r"generic task file not found: .*items\.jsonl"),
    C("generic_not_utf8", ["mc", "--task", "generic:<latin1>"], r"latin1\.jsonl, line 2: not UTF-8"),
    C("generic_empty_choice", ["mc", "--task", "generic:<empty_choice>"], r"empty_choice\.jsonl, line 1: .*choice 1 is empty"),
    C("generic_duplicate_choice", ["mc", "--task", "generic:<dup_choice>"], r"dup_choice\.jsonl, line 1: .*choices 0 and 2 are the same"),
    C("generic_bad_json", ["mc", "--task", "generic:<bad_json>"], r"bad_json\.jsonl, line 2: invalid JSON"),
    C("generic_missing_field", ["mc", "--task", "generic:<no_choices>"], r"no_choices\.jsonl, line 1: missing field 'choices'"),
    C("reclor_given_json_lines", ["mc", "--task", "reclor", "--data", "<jsonl>"], r"reclor expects a JSON list.*looks like JSON lines"),
    C("mode_probe_faithful", ["mc", "--task", "facts", "--mode", "probe", "--faithful"], r"--faithful is a logit-lens option"),
    # devices, cache folder
    C("device_cuda_absent", ["trace", "--prompt", "hi", "--device", "cuda"], r"device 'cuda': CUDA is not available here", needs="no_cuda"),
    C("device_unknown", ["mc", "--task", "facts", "--device", "gpu"], r"unknown device 'gpu': use 'cpu'"),
    C("device_mps_absent", ["depth", "--analysis", "lens", "--device", "mps"], r"device 'mps': MPS .*not available", needs="no_mps"),
    C("cache_is_a_file", ["trace", "--prompt", "hi"], r"DEPTHSTUDY_CACHE .*plain\.txt.* is a file, not a folder", env={"DEPTHSTUDY_CACHE": "<plain_file>"}),
    C("cache_under_a_file", ["mc", "--task", "facts"], r"DEPTHSTUDY_CACHE .* is a file, not a folder", env={"DEPTHSTUDY_CACHE": "<plain_file>/cache"}),
    C("cache_info_cache_is_a_file", ["cache", "info"], r"^depthstudy cache: error: DEPTHSTUDY_CACHE", env={"DEPTHSTUDY_CACHE": "<plain_file>"}),
    # models
    C("model_unknown_name", ["trace", "--model", "no-such-model", "--prompt", "hi"], r"Cannot load model 'no-such-model'.*depthstudy models"),
    C("model_path_is_a_file", ["trace", "--model", "<plain_file>", "--prompt", "hi"], r"plain\.txt is a file; pass the folder that holds config\.json"),
    C("model_folder_empty", ["mc", "--task", "facts", "--model", "<empty_dir>"], r"has no config\.json"),
    C("model_folder_no_tokenizer", ["trace", "--model", "<no_tokenizer>", "--prompt", "hi"], r"has no tokenizer"),
    C("model_pickle_only", ["trace", "--model", "<pickle_model>", "--prompt", "the cat"], r"holds only pickle checkpoints \(pytorch_model\.bin\).*--allow-pickle"),
    C("map_unknown_target", ["map", "--target", "no-such-model"], r"^depthstudy map: error: Cannot load model 'no-such-model'"),
    # remote runs: the reason in one line, nothing contacted
    C("remote_embedded_model", ["trace", "--prompt", "hi", "--remote"], r"--remote runs the model on NDIF, but 'smollm2-135m' is an embedded model"),
    C("remote_embedded_mc", ["mc", "--task", "facts", "--model", "gemma3-270m", "--remote"], r"'gemma3-270m' is an embedded model"),
    C("remote_without_key", ["trace", "--prompt", "hi", "--remote", "--model", "meta-llama/Llama-3.1-8B"],
      r"--remote runs the model on NDIF, which needs an API key, and none is set.*NDIF_API_KEY", env={"NDIF_API_KEY": None}, needs="no_key"),
    # lessons
    C("run_unknown_lesson", ["run", "no-such-lesson"], r"no lesson 'no-such-lesson'; the lessons are: 00_first_look"),
    C("run_ambiguous_lesson", ["run", "0"], r"lesson '0' is ambiguous"),
    C("run_unknown_parameter", ["run", "00_first_look", "-p", "promt", "x"], r"lesson 00_first_look has no parameter 'promt'; its parameters are: model"),
    C("run_wrong_type", ["run", "00_first_look", "-p", "top_k", "abc"], r"top_k expects int, got 'abc'"),
    C("run_wrong_bool", ["run", "00_first_look", "-p", "remote=maybe"], r"remote expects bool, got 'maybe'"),
    C("run_parameter_without_value", ["run", "00_first_look", "-p", "top_k"], r"-p top_k has no value"),
    C("run_parameter_three_words", ["run", "00_first_look", "-p", "prompt", "The", "sky"], r"-p takes NAME VALUE or NAME=VALUE"),
    C("run_out_dir_parameter", ["run", "00_first_look", "-p", "out_dir", "x"], r"out_dir is set by run_lesson"),
    C("run_unknown_kernel", ["run", "00_first_look", "--kernel", "no-such-kernel"], r"no Jupyter kernel named 'no-such-kernel'"),
    C("run_remote_embedded", ["run", "00_first_look", "-p", "remote", "true"], r"lesson 00_first_look with remote=True .*'smollm2-135m' is an embedded model"),
    C("run_remote_embedded_in_list", ["run", "04_scale", "-p", "remote=true", "-p", "models", '["meta-llama/Llama-3.1-8B", "gemma3-270m"]'],
      r"'gemma3-270m' is an embedded model.*-p models"),
    C("run_remote_without_key", ["run", "00_first_look", "-p", "remote", "true", "-p", "model", "meta-llama/Llama-3.1-8B"],
      r"lesson 00_first_look with remote=True runs the model on NDIF, which needs an API key", env={"NDIF_API_KEY": None}, needs="no_key"),
    C("reproduce_remote_embedded", ["reproduce", "--remote"], r"^depthstudy reproduce: error: lesson 00_first_look with remote=True"),
    C("reproduce_unknown_lesson", ["reproduce", "--lessons", "00", "nope"], r"no lesson 'nope'"),
    # issue 24: a template that is no prompt (nothing written: test_nothing_left_behind checks the empty folder)
    C("template_empty", ["mc", "--task", "generic:<jsonl>", "--template", "", "--out", "<empty_dir>/r.csv"],
      r"--template is empty: a template must contain \{question\}.*--answer-only"),
    C("template_whitespace", ["mc", "--task", "generic:<jsonl>", "--template", "   ", "--out", "<empty_dir>/r.csv"],
      r"--template is only whitespace: a template must contain \{question\}"),
    C("template_without_any_field", ["mc", "--task", "generic:<jsonl>", "--template", "Answer:", "--out", "<empty_dir>/r.csv"],
      r"--template must contain \{question\}.*got 'Answer:'"),
    C("answer_only_with_lens", ["mc", "--task", "facts", "--answer-only"], r"--answer-only is the probes' surface-baseline control"),
    # issue 28: writing over an input, formats, options an analysis would ignore
    C("out_is_the_data_file", ["depth", "--analysis", "lens", "--n", "1", "--data", "<jsonl>", "--out", "<jsonl>"],
      r"--out .*jsonl\.jsonl is .*which this command reads"),
    C("out_is_the_generic_file", ["mc", "--task", "generic:<jsonl>", "--out", "<jsonl>"], r"which this command reads"),
    C("out_unknown_suffix", ["mc", "--task", "facts", "--out", "<empty_dir>/r.json"], r"the suffix decides the format.*\.csv or \.parquet"),
    C("hops_with_variant", ["depth", "--analysis", "hops", "--variant", "current"], r"--variant is not used by --analysis hops"),
    C("contrib_with_mode_and_variant", ["depth", "--analysis", "contrib", "--mode", "attn", "--variant", "current"],
      r"--mode and --variant are not used by --analysis contrib"),
    C("lens_with_mode", ["depth", "--analysis", "lens", "--mode", "mlp"], r"--mode is not used by --analysis lens"),
    C("trace_empty_prompt", ["trace", "--prompt", ""], r"--prompt is empty"),
    C("trace_blank_prompt", ["trace", "--prompt", " \n "], r"--prompt is empty"),
    C("calculation_n_beyond_its_items", ["mc", "--task", "calculation", "--n", "1000000000"], r"only \d+ distinct add items .*ask for at most \d+"),
    C("hops_n_beyond_its_items", ["depth", "--analysis", "hops", "--n", "1000000000"], r"only \d+ distinct 1-operation chains"),
    C("generic_task_null", ["mc", "--task", "generic:<task_null>"], r"task_null\.jsonl, line 1: field 'task' must be a non-empty string"),
    C("generic_task_list", ["mc", "--task", "generic:<task_list>"], r"task_list\.jsonl, line 1: field 'task' must be a non-empty string"),
    C("hierarchy_cv_one", ["hierarchy", "--level", "items", "--cv", "1"], r"--cv must be at least 2"),
    C("debug_zero_means_off", ["mc", "--task", "no-such-task"], r"unknown task 'no-such-task'", env={"DEPTHSTUDY_DEBUG": "0"}),
    C("model_truncated_weights", ["trace", "--model", "<truncated_model>", "--prompt", "hi"], r"model\.safetensors is damaged \(.*truncated"),
    C("cache_clear_a_users_folder", ["cache", "clear"], r"refusing to clear .*full.*did not make .*nothing was deleted",
      env={"DEPTHSTUDY_ACTS": "<full_dir>"}),
    # lesson parameters: ranges from the parameters cell, checked before a kernel starts
    C("run_top_k_negative", ["run", "00_first_look", "-p", "top_k", "-1"], r"top_k must be at least 1, got -1"),
    C("run_top_k_zero", ["run", "00", "-p", "top_k=0"], r"top_k must be at least 1, got 0"),
    C("run_layers_step_zero", ["run", "02", "-p", "layers_step", "0"], r"layers_step must be at least 1, got 0"),
    C("run_models_empty", ["run", "01", "-p", "models", "[]"], r"models must have at least 1 entry, got \[\]"),
    C("run_test_frac_too_big", ["run", "02", "-p", "test_frac", "2.0"], r"test_frac must be below 1, got 2\.0"),
    C("run_unknown_level", ["run", "03", "-p", "levels", '["items", "words"]'], r"levels must hold only .*'words' is none of them"),
    C("run_blank_prompt", ["run", "00", "-p", "prompt", "  "], r"prompt must not be empty"),
    C("run_key_with_line_ending_in_a_parameter", ["run", "00", "-p", "prompt", "My key is ndif-hostile-key-42"],
      r"parameter prompt holds the NDIF key", env={"NDIF_API_KEY": "ndif-hostile-key-42\r"}),
    C("run_quoted_key_in_a_parameter", ["run", "00", "-p", "prompt", "key: ndif-hostile-key-42"],
      r"parameter prompt holds the NDIF key", env={"NDIF_API_KEY": "'ndif-hostile-key-42'\n"}),
    C("run_blank_key_is_no_key", ["run", "00", "-p", "remote", "true", "-p", "model", "meta-llama/Llama-3.1-8B"],
      r"needs an API key, and none is set", env={"NDIF_API_KEY": "  \r\n"}, needs="no_key"),
    # found by the hostile review of issue 28's fixes
    C("mc_keep_header_without_template", ["mc", "--task", "facts", "--keep-header"], r"--keep-header keeps the task's few-shot header"),
    C("mc_length_norm_with_probe", ["mc", "--task", "facts", "--mode", "probe", "--length-norm"], r"--length-norm averages"),
    C("mc_data_with_generic_task", ["mc", "--task", "generic:<jsonl>", "--data", "<plain_file>"], r"already names its file; --data"),
    C("out_is_a_users_file", ["mc", "--task", "facts", "--out", "<users_csv>"], r"exists and is not a depthstudy results table"),
    C("generic_empty_question", ["mc", "--task", "generic:<empty_question>"], r"empty_question\.jsonl, line 1: field 'question' is empty"),
    C("run_empty_out", ["run", "00", "--out", ""], r"the lessons' output folder is empty"),
    C("run_blank_model_in_list", ["run", "01", "-p", "models", '[""]'], r"models must hold no empty entry"),
    C("run_data_folder_typo", ["run", "01", "-p", "data", "<empty_dir>/typo"], r"data must be \"\" \(the default\) or a folder that exists"),
    C("run_nested_parameter", ["run", "01", "-p", "models", "[" * 3000 + "]" * 3000], r"models expects list"),
    C("run_n_shuffle_huge", ["run", "03", "-p", "n_shuffle", "100000000"], r"n_shuffle must be at most 100000"),
    C("run_key_with_bom", ["run", "00", "-p", "prompt", "key ndif-hostile-key-42"], r"parameter prompt holds the NDIF key",
      env={"NDIF_API_KEY": "\ufeffndif-hostile-key-42"}),
    C("reproduce_lessons_without_names", ["reproduce", "--lessons"], r"argument --lessons: expected at least one argument"),
    C("cache_under_unknown_user", ["cache", "info"], r"starts with ~nosuchuser0, but this machine has no user", env={"DEPTHSTUDY_CACHE": "~nosuchuser0/x"}),
    # after the model loads, still one line
    C("trace_prompt_too_long", ["trace", "--prompt", LONG_PROMPT], r"--prompt has \d+ tokens, more than smollm2-135m's context of 8192 tokens", early=False),
    C("lesson_fails_inside_papermill", ["run", "00_first_look", "-p", "model", "no-such-model", "--out", "<runs>"],
      r"lesson 00_first_look failed in cell \d+: ModelNotFoundError: Cannot load model 'no-such-model'.*"
      r"The partly executed notebook is .*00_first_look\.ipynb$", early=False),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "The bad inputs on disk, by the names the cases use: data files, model folders, a plain file, folders."
    import torch
    from depthstudy.models import tiny_model, tiny_tokenizer
    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": d, "empty_dir": d / "empty", "full_dir": d / "full", "plain_file": d / "plain.txt", "runs": d / "runs"}
    f["empty_dir"].mkdir(); f["full_dir"].mkdir(); (f["full_dir"] / "notes.txt").write_text("my notes")
    f["plain_file"].write_text("not a folder\n")
    f["users_csv"] = d / "mine.csv"; f["users_csv"].write_text("name,score\nanna,3\n")   # a table of the user's own
    good = '{"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0}\n'
    for name, text in (("latin1", good.encode() + '{"question": "café?", "choices": ["oui", "non"], "answer": 0}\n'.encode("latin-1")),
                       ("empty_choice", '{"question": "2 + 2 =", "choices": ["4", ""], "answer": 0}\n'),
                       ("dup_choice", '{"question": "2 + 2 =", "choices": ["4", "5", "4 "], "answer": 0}\n'),
                       ("bad_json", good + '{"question": "3 + 3 =", "choices": ["6", "7"], "answer": 0\n'),
                       ("no_choices", '{"question": "2 + 2 =", "answer": 0}\n'),
                       ("jsonl", good),
                       ("empty_question", '{"question": "  ", "choices": ["4", "5"], "answer": 0}\n'),
                       ("task_null", '{"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0, "task": null}\n'),
                       ("task_list", '{"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0, "task": ["x"]}\n')):
        p = d / f"{name}.jsonl"
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        f[name] = p
    m = tiny_model("llama")
    f["no_tokenizer"] = d / "no_tokenizer"                   # config and safetensors weights, no tokenizer
    m.hf.save_pretrained(f["no_tokenizer"])
    f["truncated_model"] = d / "truncated_model"             # a whole folder whose weights file was cut short
    m.hf.save_pretrained(f["truncated_model"]); tiny_tokenizer().save_pretrained(f["truncated_model"])
    w = f["truncated_model"] / "model.safetensors"; w.write_bytes(w.read_bytes()[:-100])
    f["pickle_model"] = d / "pickle_model"                   # config, tokenizer and only a pickle checkpoint
    m.hf.config.save_pretrained(f["pickle_model"])
    tiny_tokenizer().save_pretrained(f["pickle_model"])
    # transformers 5 writes safetensors even with safe_serialization=False, so the pickle is written by torch itself
    torch.save(m.hf.state_dict(), f["pickle_model"] / "pytorch_model.bin")
    assert not list(f["pickle_model"].glob("*.safetensors")) and not list(f["no_tokenizer"].glob("tokenizer*"))
    return f


def _missing(needs: set) -> dict:
    "{condition: why this machine does not meet it} for the conditions in `needs` that it does not meet."
    import torch
    out = {}
    if "no_cuda" in needs and torch.cuda.is_available(): out["no_cuda"] = "this machine has CUDA"
    if "no_mps" in needs and torch.backends.mps.is_available(): out["no_mps"] = "this machine has MPS"
    if "proc" in needs and not Path("/proc/self").exists(): out["proc"] = "no /proc here (not Linux)"
    if "no_key" in needs:                                  # a key saved in nnsight's config counts even with NDIF_API_KEY unset
        env = {k: v for k, v in os.environ.items() if k != "NDIF_API_KEY"}
        r = subprocess.run([sys.executable, "-c", "from depthstudy.ndif import ndif_key_present; print(ndif_key_present())"],
                           capture_output=True, text=True, env=env, timeout=120)
        if r.stdout.strip() == "True": out["no_key"] = "an NDIF key is saved in nnsight's config"
    return out


def _run(case: Case, files, cache: Path | None):
    fill = lambda s: re.sub(r"<(\w+)>", lambda m: str(files[m.group(1)]), s)
    argv = [fill(a) for a in case.argv]
    env = dict(os.environ)
    env.pop("DEPTHSTUDY_DEBUG", None)
    if cache is not None: env["DEPTHSTUDY_CACHE"] = str(cache)
    for k, v in case.env.items():
        if v is None: env.pop(k, None)
        else: env[k] = fill(v)
    t = time.time()
    r = subprocess.run([EXE, *argv], capture_output=True, text=True, env=env, timeout=600, cwd=files["dir"])
    return r, time.time() - t


@pytest.fixture(scope="module")
def outcomes(request, files, tmp_path_factory):
    """Run the selected cases, JOBS at a time: {id: (CompletedProcess, seconds, fresh cache folder or None)},
    or {id: why it cannot run here} for a case whose condition this machine does not meet."""
    chosen = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", "") == "test_bad_input" and hasattr(item, "callspec")
              and item.module.__name__ == __name__}
    missing = _missing({c.needs for c in CASES if c.id in chosen and c.needs})
    jobs, out = {}, {}
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        for c in CASES:
            if c.id not in chosen: continue
            if c.needs in missing: out[c.id] = missing[c.needs]; continue
            cache = tmp_path_factory.mktemp(f"cache_{c.id}") if c.early else None
            jobs[c.id] = (pool.submit(_run, c, files, cache), cache)
        out.update({k: (*fut.result(), cache) for k, (fut, cache) in jobs.items()})
    return out


def test_table_is_large_and_ids_unique():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(case, outcomes):
    if isinstance(outcomes[case.id], str): pytest.skip(f"needs {case.needs}: {outcomes[case.id]}")
    r, seconds, cache = outcomes[case.id]
    shown = f"exit {r.returncode}\n--- stderr:\n{r.stderr[-3000:]}\n--- stdout:\n{r.stdout[-1000:]}"
    assert r.returncode == 2, shown
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, shown
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one line on stderr\n{shown}"
    assert re.match(r"depthstudy( [a-z]+)?: error: \S", lines[0]), shown
    assert re.search(case.expect, lines[0]), f"{case.expect!r} not in the message\n{shown}"
    if case.early:
        assert not (cache / "models").exists(), "the model was loaded (prepared) before the mistake was reported"
        assert seconds < EARLY_SECONDS, f"took {seconds:.1f} s: not caught before the model loads?"


def test_nothing_left_behind(outcomes, files):
    "The write checks create and remove a probe file; refused runs leave no file or folder behind."
    if not outcomes: pytest.skip("no case ran")
    assert list(files["empty_dir"].iterdir()) == []
    assert [p.name for p in files["full_dir"].iterdir()] == ["notes.txt"]
    assert not any(p.name.startswith(".depthstudy-write-test") or p.suffix == ".tmp" for p in files["dir"].rglob("*"))


def test_allow_pickle_loads_the_pickle_folder(files, tmp_path):
    "The folder refused without --allow-pickle loads with it (the option reaches load_model)."
    r = subprocess.run([EXE, "trace", "--model", str(files["pickle_model"]), "--prompt", "the capital of france is",
                        "--allow-pickle", "--no-cache"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, DEPTHSTUDY_CACHE=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "3 layers" in r.stdout and r.stdout.splitlines()[-1].startswith("next token: ")
    assert r.stderr == ""                                  # no warnings or progress bars in a pipe


def test_template_escapes_keep_non_ascii_text():
    from depthstudy.cli import decode_escapes, mc_template
    from depthstudy.tasks import load_task
    assert decode_escapes(r"Frage: {question}\nAntwort – ü 答:") == "Frage: {question}\nAntwort – ü 答:"
    assert decode_escapes(r"a\tb\\n") == "a\tb\\n"
    t = mc_template(r"Frage: {question}\nAntwort:", load_task("facts", n=3))
    assert t.fmt == "Frage: {question}\nAntwort:" and t.header == ""
    with pytest.raises(ValueError, match=r"escape '\\u'"):
        decode_escapes(r"caf\u00e9 {question}")


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import pandas as pd
    from depthstudy.results import save_results, tidy
    df = tidy([dict(task="t", layer=0, metric="m", value=1.0)], model="toy", n_layers=1)
    def fail(self, path, **kw):
        Path(path).write_text("half a tab"); raise OSError(28, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", fail)
    with pytest.raises(OSError, match="No space left"):
        save_results(df, tmp_path / "r.csv")
    assert list(tmp_path.iterdir()) == []
