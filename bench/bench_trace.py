"""Benchmark the foundation: cold vs warm load of the embedded model, and all-layer collection
throughput against a plain Hugging Face forward with output_hidden_states=True on the same batches.

    python bench/bench_trace.py [--repeats 5] [--batches 6] [--batch-size 8]

Prints medians; ratios are measured side by side in one run. Peak memory is the process's max RSS.
"""
import argparse, os, resource, statistics, subprocess, sys, tempfile, time
import torch


def load_times():
    "Cold (empty cache: dequantise the GGUF) and warm (cached safetensors) loads, each in a fresh process."
    code = "import time; t=time.time(); from depthstudy.models import load_model; load_model(progress=False); print(time.time()-t)"
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, DEPTHSTUDY_CACHE=d)
        run = lambda: float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()[-1])
        return run(), run()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-load", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from depthstudy.models import load_model
    from depthstudy.trace import collect
    if not a.skip_load:
        cold, warm = load_times()
        print(f"load smollm2-135m: cold {cold:.1f} s (dequantise + cache), warm {warm:.2f} s  ({cold / warm:.0f}x)")
    m = load_model()
    words = "the model reads every token and writes its view of it into the residual stream one layer at a time".split()
    prompts = [" ".join(words[(i * 7) % 10:]) + f" number {i}" for i in range(a.batches * a.batch_size)]
    batches = [prompts[i:i + a.batch_size] for i in range(0, len(prompts), a.batch_size)]
    n_tok = sum(int(m.encode(b)["attention_mask"].sum()) for b in batches)

    def plain(head=True):
        with torch.no_grad():
            for b in batches:
                f = m.hf if head else m.hf.model   # with or without the output head over every position
                out = f(**m.encode(b), output_hidden_states=True)
                _ = [h.float().cpu() for h in out.hidden_states]

    runs = {
        "plain HF CausalLM forward, output_hidden_states (head on all positions)": lambda: plain(True),
        "plain HF base-model forward, output_hidden_states (no head)": lambda: plain(False),
        "depthstudy collect resid+attn+mlp, all positions, logits": lambda: collect(
            m, prompts, positions="all", logits=True, batch_size=a.batch_size, cache=False, progress=False),
        "depthstudy collect resid+attn+mlp, all positions, no logits": lambda: collect(
            m, prompts, positions="all", batch_size=a.batch_size, cache=False, progress=False),
    }
    for f in runs.values(): f()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(a.repeats):  # interleaved, so load on the machine hits all alike
        for k, f in runs.items():
            t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(prompts)} prompts, {n_tok} tokens, batch {a.batch_size}, {a.repeats} repeats (medians, torch threads {torch.get_num_threads()})")
    for k, v in med.items(): print(f"  {n_tok / v:8.0f} tokens/s  {v:7.2f} s  {k}")
    keys = list(med)
    print(f"collect with logits vs plain CausalLM forward: {med[keys[2]] / med[keys[0]] - 1:+.1%} time")
    print(f"collect without logits vs plain base-model forward: {med[keys[3]] / med[keys[1]] - 1:+.1%} time")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
