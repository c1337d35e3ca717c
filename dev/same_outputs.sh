#!/usr/bin/env bash
# Behaviour unchanged across a restructure (issues 13 and 27): write every analysis's results table into OUT, on the
# embedded model with small sizes, through interfaces that a restructure keeps (the CLI, and skip_effects for the
# engine choice the CLI does not offer). Run it before and after, each with its own empty activation store, then
#   dev/same_outputs.sh compare BEFORE AFTER
# says, file by file, whether the two tables are identical (pandas DataFrame.equals, same columns). To write the tables of
# another commit with this venv: git worktree add /tmp/old COMMIT; PYTHONPATH=/tmp/old dev/same_outputs.sh write OUT.
#   usage: dev/same_outputs.sh write OUT | compare BEFORE AFTER
set -euo pipefail
BIN=${BIN:-.venv/bin}
export TQDM_DISABLE=1
case "${1:-}" in
write)
  out=$(realpath -m "$2"); mkdir -p "$out"
  export DEPTHSTUDY_ACTS="$out/.acts"            # an empty activation store of its own: every number recomputed
  ds() { "$BIN/depthstudy" "$@" > /dev/null; }
  ds mc --task facts --n 12 --mode lens --out "$out/mc_lens.csv"
  ds mc --task facts --n 12 --mode lens --faithful --out "$out/mc_lens_faithful.csv"
  ds mc --task facts --n 12 --mode probe --out "$out/mc_probe.csv"
  ds depth --analysis contrib --n 3 --out "$out/contrib.csv"
  ds depth --analysis lens --n 3 --out "$out/depth_lens.csv"
  ds depth --analysis skip --n 3 --out "$out/skip_block.csv"
  ds depth --analysis skip --n 3 --mode attn --variant current --out "$out/skip_attn_current.csv"
  ds map --source smollm2-135m --target smollm2-135m --n 8 --out "$out/map.csv"
  ds hierarchy --level relations --n 60 --out "$out/hierarchy.csv"
  bin=$(realpath "$BIN")
  (cd "$out" && "$bin/python" - "$out") <<'EOF'     # from $out: with PYTHONPATH=<a checkout> that checkout is imported
import sys
from depthstudy.models import load_model
from depthstudy.skip import skip_effects
from depthstudy.tasks import corpus_texts
m, out = load_model("smollm2-135m"), sys.argv[1]
texts = corpus_texts(n=3).texts   # a list (skip_effects took no Corpus before issue 27)
for engine in ("direct", "nnsight"):
    for mode in ("block", "mlp"):
        skip_effects(m, texts, mode=mode, engine=engine, progress=False, cache=False).to_csv(f"{out}/skip_{engine}_{mode}.csv", index=False)
EOF
  ls "$out"/*.csv | wc -l | xargs echo "tables written:" ;;
compare)
  "$BIN/python" - "$2" "$3" <<'EOF'
import sys, pathlib, pandas as pd
a, b = map(pathlib.Path, sys.argv[1:3])
bad = 0
for f in sorted(a.glob("*.csv")):
    g = b / f.name
    if not g.exists(): print(f"{f.name}: missing after"); bad += 1; continue
    x, y = pd.read_csv(f), pd.read_csv(g)
    same = list(x.columns) == list(y.columns) and x.equals(y)
    print(f"{f.name}: {len(x)} rows, {'identical' if same else 'DIFFERENT'}"); bad += not same
sys.exit(1 if bad else 0)
EOF
  ;;
*) echo "usage: $0 write OUT | compare BEFORE AFTER" >&2; exit 2 ;;
esac
