"""Benchmark: layer-wise multiple-choice scoring on the embedded model, `mc_scores` vs the plain implementation.

Run: `python bench/bench_lens.py [--tasks facts truthfulqa-mc1 calculation] [--n 10] [--repeats 3] [--ref-repeats 1]
[--lens faithful|final_norm] [--batch-size 8]`.

The plain implementation is `depthstudy.mc.mc_scores_reference`: the official code's way, one Hugging Face
forward per (item, choice) with `output_hidden_states=True` and the output head over every position of every
layer. Both run the same lens (`--lens`: the paper-faithful one by default) on the same items and prompts. Each
side runs in its own process (so peak memory is its own), `--repeats` (`--ref-repeats` for the slow plain side)
times; the script prints median wall time, items/s, the speed ratio, peak resident memory, and checks equal
results: identical MC1 at every layer, and scores within 1e-4 + 1e-5 x |score| (un-normed layers score in the
hundreds, where float32 hidden states computed in a padded batch differ from unpadded ones in the 7th digit).
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time
import numpy as np


def items_for(tasks, n, seed):
    from depthstudy.tasks import load_task
    out = []
    for t in tasks:
        out += load_task(t, n=n, seed=seed)
    return out


def worker(args):
    import torch
    torch.set_num_threads(args.threads) if args.threads else None
    from depthstudy.models import load_model
    from depthstudy.mc import mc_scores, mc_scores_reference
    m = load_model(args.model)
    items = items_for(args.tasks, args.n, args.seed)
    faithful = args.lens == "faithful"
    if args.side == "fast":
        run = lambda: mc_scores(m, items, faithful=faithful, batch_size=args.batch_size, progress=False)
    else:
        run = lambda: mc_scores_reference(m.hf, m.tokenizer, items, faithful=faithful)
    times = []
    for _ in range(args.repeats if args.side == "fast" else args.ref_repeats):
        t0 = time.perf_counter(); scores = run(); times.append(time.perf_counter() - t0)
    np.savez(args.save, *[s.float().numpy() for s in scores])
    json.dump(dict(times=times, n_items=len(items), n_choices=sum(len(i.choices) for i in items),
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   correct=[list(i.correct) for i in items]), open(args.save + ".json", "w"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="+", default=["facts", "truthfulqa-mc1", "calculation"])
    ap.add_argument("--n", type=int, default=10, help="items per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-repeats", type=int, default=1, help="repeats of the slow plain implementation")
    ap.add_argument("--lens", choices=["faithful", "final_norm"], default="faithful")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--side", choices=["fast", "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side: return worker(args)

    tmp = tempfile.mkdtemp(prefix="bench_lens_")
    res = {}
    for side in ("fast", "ref"):
        save = os.path.join(tmp, side)
        cmd = [sys.executable, __file__, "--side", side, "--save", save, "--model", args.model, "--n", str(args.n),
               "--seed", str(args.seed), "--repeats", str(args.repeats), "--ref-repeats", str(args.ref_repeats), "--lens", args.lens, "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--tasks", *args.tasks]
        subprocess.run(cmd, check=True)
        meta = json.load(open(save + ".json"))
        z = np.load(save + ".npz", allow_pickle=False)
        meta["scores"] = [z[f"arr_{i}"] for i in range(len(z.files))]
        res[side] = meta

    f, r = res["fast"], res["ref"]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(f["scores"], r["scores"]))
    rel = max(float((np.abs(a - b) / np.maximum(np.abs(b), 1e-12)).max()) for a, b in zip(f["scores"], r["scores"]))
    within = all(np.allclose(a, b, atol=1e-4, rtol=1e-5) for a, b in zip(f["scores"], r["scores"]))
    def mc1(scores):
        return np.stack([S[c[0]] > np.delete(S, c, 0).max(0) for S, c in zip(scores, f["correct"])])
    same_mc1 = bool((mc1(f["scores"]) == mc1(r["scores"])).all())
    tf, tr = statistics.median(f["times"]), statistics.median(r["times"])
    n = f["n_items"]
    print(f"model {args.model}, tasks {' '.join(args.tasks)}: {n} items, {f['n_choices']} choices, "
          f"{f['scores'][0].shape[1]} layer columns, {args.lens} lens, load {os.getloadavg()[0]:.2f}")
    print(f"plain (one forward per choice, head everywhere): median {tr:7.2f} s  {n / tr:7.2f} items/s  "
          f"peak RSS {r['peak_rss_mb']:.0f} MB   runs {', '.join(f'{t:.2f}' for t in r['times'])}")
    print(f"mc_scores (batched, head at answer positions only): median {tf:7.2f} s  {n / tf:7.2f} items/s  "
          f"peak RSS {f['peak_rss_mb']:.0f} MB   runs {', '.join(f'{t:.2f}' for t in f['times'])}")
    print(f"speed-up {tr / tf:.1f}x; max |score difference| {diff:.2e} (relative {rel:.1e}); within 1e-4 + 1e-5|score|: "
          f"{within}; identical MC1 at every layer: {same_mc1}")
    if not within or not same_mc1:
        sys.exit("results differ: the benchmark is void")


if __name__ == "__main__":
    main()
