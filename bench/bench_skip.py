"""Benchmark: the full layer-skip effect matrix of the embedded model, batched vs one pass per skipped run.

Run: `python bench/bench_skip.py [--texts 3] [--repeats 3] [--variant current|future] [--n-t 1]`.
The naive loop below is written out on purpose (it is what the batched path replaces): per text one clean
pass, then one pass per (skipped layer, t), each comparing with the clean pass. Both batched engines of
`skip_raw` ("direct", the default for local models: only the layers a skip changes are recomputed; and
"nnsight", one batched trace per chunk, the path NDIF uses) must give the same matrix as the naive loop;
the script checks that and prints median wall and CPU times, the speed ratios and each path's peak memory
(resident set size sampled while it runs). Needs GSM8K: `$DEPTHSTUDY_DATA` or `../shared/data` next to the
repository. On a shared machine read the CPU times and the load average printed with them.
"""
import argparse, os, statistics, threading, time
from pathlib import Path
import numpy as np
import torch
import nnsight
from depthstudy.models import load_model
from depthstudy.tasks import gsm8k_texts
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


class PeakRSS:
    "Peak resident set size (MiB) of this process while the `with` block runs, sampled every 5 ms."
    def __enter__(self):
        self.peak, self._stop = _rss(), threading.Event()
        def loop():
            while not self._stop.wait(0.005): self.peak = max(self.peak, _rss())
        self._t = threading.Thread(target=loop, daemon=True); self._t.start()
        return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, _rss())


def _rss():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def timed(f):
    "(result, wall s, CPU s, peak RSS MiB) of f()."
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakRSS() as mem: r = f()
    return r, time.perf_counter() - t0, time.process_time() - c0, mem.peak


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
    ap.add_argument("--engines", default="direct,nnsight", help="batched engines of skip_raw to compare")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    root = Path(__file__).resolve().parents[1]
    os.environ.setdefault("DEPTHSTUDY_DATA", str(root.parent / "shared" / "data"))
    m = load_model(a.model)
    texts = [t[:a.max_chars] for t in gsm8k_texts(n=a.texts)]
    lens = [int(x) for x in m.encode(texts)["attention_mask"].sum(1)]
    print(f"{m}; {len(texts)} texts of {lens} tokens; variant={a.variant} n_t={a.n_t}; device={m.device}; "
          f"torch threads={torch.get_num_threads()}; load average at start {os.getloadavg()}")
    kw = dict(mode="block", variant=a.variant, n_t=a.n_t, seed=0)
    engines = [e for e in a.engines.split(",") if e]
    T = {k: dict(wall=[], cpu=[], mem=0.0, passes=0) for k in engines + ["naive"]}
    base = _rss()
    for r in range(a.repeats):
        for k in engines + ["naive"]:
            n0 = m.n_forward
            if k == "naive": res, w, c, mem = timed(lambda: naive(m, texts, a.variant, a.n_t, 0))
            else: res, w, c, mem = timed(lambda: skip_raw(m, texts, batch_size=a.batch_size, progress=False, engine=k, **kw))
            T[k]["wall"].append(w); T[k]["cpu"].append(c); T[k]["mem"] = max(T[k]["mem"], mem)
            T[k]["passes"] = m.n_forward - n0; T[k]["res"] = res
    em, om = T["naive"]["res"]
    ok = True
    for k in engines:
        raw = T[k]["res"]
        de = np.abs(raw["eff_max"] - em).max(); do = np.abs(raw["out_max"] - om).max()
        print(f"max |{k} - naive|: effects {de:.2e}, output {do:.2e}")
        ok &= bool(de < 1e-3 and do < 1e-4)
    print(f"resident memory before the runs: {base:.0f} MiB (model, tokenizer, libraries)")
    for k in engines + ["naive"]:
        t = T[k]
        print(f"{k:8s}: {t['passes']:4d} forward passes, median wall {statistics.median(t['wall']):7.2f} s, "
              f"CPU {statistics.median(t['cpu']):7.2f} s, peak RSS {t['mem']:.0f} MiB  "
              f"(wall runs {[round(x, 2) for x in t['wall']]})")
    for k in engines:
        print(f"speed ratio naive/{k}: wall {statistics.median(T['naive']['wall']) / statistics.median(T[k]['wall']):.2f}x, "
              f"CPU {statistics.median(T['naive']['cpu']) / statistics.median(T[k]['cpu']):.2f}x")
    print(f"load average at end {os.getloadavg()}")
    assert ok, "batched and naive skip effects differ"


if __name__ == "__main__":
    main()
