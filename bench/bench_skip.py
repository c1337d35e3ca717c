"""Benchmark: the full layer-skip effect matrix of the embedded model, batched vs one pass per skipped run.

Run: `python bench/bench_skip.py [--texts 3] [--repeats 3] [--variant current|future] [--n-t 1]`.
The naive loop below is written out on purpose (it is what the batched path replaces): per text one clean
pass, then one pass per (skipped layer, t), each comparing with the clean pass. Both must give the same
matrix; the script checks that and prints median wall times and the speed ratio.
"""
import argparse, statistics, time
import numpy as np
import torch
import nnsight
from depthstudy.models import load_model
from depthstudy.residual import gsm8k_texts
from depthstudy.skip import skip_raw, draw_ts


def naive(m, texts, variant, n_t, seed):
    "One forward pass per skipped run (block mode), max over measured positions and t, per text."
    L = m.n_layers
    lengths = [int(x) for x in m.encode(texts)["attention_mask"].sum(1)]
    ts = draw_ts(lengths, n_t, seed) if variant == "future" else [[None]] * len(texts)
    eff_max, out_max = np.zeros((len(texts), L, L)), np.zeros((len(texts), L))
    blocks, norm, head = m.blocks, m.norm, m.head

    def run(enc, s=None, t=None):
        with torch.no_grad():
            with m.trace(enc):
                hs = nnsight.save([])
                for l in range(L):
                    hin = blocks[l].input
                    hs.append(hin)
                    if l == s:
                        hi = t if t is not None else hin.shape[1]
                        blocks[l].output[:, 1:hi] = hin[:, 1:hi]
                hs.append(norm.input)
                p = head.output.float().softmax(-1).save()
        return torch.stack([(hs[l + 1] - hs[l]).float()[0] for l in range(L)]), p[0]

    for i, text in enumerate(texts):
        enc = m.encode([text])
        d0, p0 = run(enc)
        for t in ts[i]:
            lo = t if t is not None else 1
            for s in range(L):
                d, p = run(enc, s, t)
                e = (d - d0)[:, lo:].norm(dim=-1) / d0[:, lo:].norm(dim=-1).clamp(min=1e-6)
                eff_max[i, s] = np.maximum(eff_max[i, s], e.amax(1).double().numpy())
                out_max[i, s] = max(out_max[i, s], float((p - p0)[lo:].norm(dim=-1).max()))
    return eff_max, out_max


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--texts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", default="future")
    ap.add_argument("--n-t", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-chars", type=int, default=400, help="truncate texts (keeps CPU runs short)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    m = load_model(a.model)
    texts = [t[:a.max_chars] for t in gsm8k_texts(n=a.texts)]
    lens = [int(x) for x in m.encode(texts)["attention_mask"].sum(1)]
    print(f"{m}; {len(texts)} texts of {lens} tokens; variant={a.variant} n_t={a.n_t}; device={m.device}; "
          f"torch threads={torch.get_num_threads()}")
    kw = dict(mode="block", variant=a.variant, n_t=a.n_t, seed=0)
    tb, tn = [], []
    for r in range(a.repeats):
        t0 = time.perf_counter(); n0 = m.n_forward
        raw = skip_raw(m, texts, batch_size=a.batch_size, progress=False, **kw)
        tb.append(time.perf_counter() - t0); nb = m.n_forward - n0
        t0 = time.perf_counter(); n0 = m.n_forward
        em, om = naive(m, texts, a.variant, a.n_t, 0)
        tn.append(time.perf_counter() - t0); nn = m.n_forward - n0
    de = np.abs(raw["eff_max"] - em).max(); do = np.abs(raw["out_max"] - om).max()
    print(f"max |batched - naive|: effects {de:.2e}, output {do:.2e}")
    assert de < 1e-3 and do < 1e-4, "batched and naive skip effects differ"
    mb, mn = statistics.median(tb), statistics.median(tn)
    print(f"batched: {nb} forward passes, median {mb:.2f} s  (runs {[round(x, 2) for x in tb]})")
    print(f"naive:   {nn} forward passes, median {mn:.2f} s  (runs {[round(x, 2) for x in tn]})")
    print(f"speed ratio naive/batched: {mn / mb:.2f}x")


if __name__ == "__main__":
    main()
