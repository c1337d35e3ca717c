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

    def plain():
        with torch.no_grad():
            for b in batches:
                out = m.hf(**m.encode(b), output_hidden_states=True)
                _ = [h.float().cpu() for h in out.hidden_states]

    def ours():
        collect(m, prompts, positions="all", batch_size=a.batch_size, cache=False, progress=False)

    plain(); ours()  # warm-up
    t_plain, t_ours = [], []
    for _ in range(a.repeats):  # interleaved, so load on the machine hits both alike
        t = time.perf_counter(); plain(); t_plain.append(time.perf_counter() - t)
        t = time.perf_counter(); ours(); t_ours.append(time.perf_counter() - t)
    mp, mo = statistics.median(t_plain), statistics.median(t_ours)
    print(f"{len(prompts)} prompts, {n_tok} tokens, batch {a.batch_size}, {a.repeats} repeats (medians)")
    print(f"plain HF forward, output_hidden_states: {n_tok / mp:8.0f} tokens/s")
    print(f"depthstudy collect (resid+attn+mlp, all positions): {n_tok / mo:8.0f} tokens/s  -> {mo / mp - 1:+.1%} time vs plain")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
