#!/usr/bin/env bash
# One device call for a seed recipe: its train -> hessians -> quantize -> pack -> code -> size_check -> evaluate chain
# on the bench corpus (its CaseOps tokenizer standing in for the recipe's data) at bench-1gpu's 60 steps, then one
# line with the eval seconds, the size and the score. The eval's prequant step is skipped (the timed eval is what
# is measured), so eval.json has no prequant entry. Files under $OUT:
#   eval.json size.json pack.json   the stages' outputs
#   stages.tsv                      wall seconds and exit status of each stage
#   logs.txt                        the tail of every stage's log
#
# Prepare here (jsonschema is missing there):
#   bash bench/prepare.sh && python bench/device_configs.py --out .device/recipe-pr1572 recipes/pr1572.yaml \
#       recipes/bench-1gpu.yaml recipes/bench-pr1572.yaml     (that last overlay keeps #1572's chain inside the call)
# There: OUT=... bash bench/gpu_recipe.sh pr1572   (carry .whl .deb bench/data .device)
# CPU dry run here: bash bench/gpu_recipe_dryrun.sh pr1572
RECIPE=${1:?usage: bash bench/gpu_recipe.sh RECIPE (configs from bench/device_configs.py in .device/recipe-RECIPE)}
export PGOLF_DEVICE_CONFIGS=${PGOLF_DEVICE_CONFIGS:-.device/recipe-$RECIPE}
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/recipe-$RECIPE
case "$PG_DATA_SOURCE" in
    local | builtin) ;;
    *) echo "data.source $PG_DATA_SOURCE needs the network; overlay recipes/bench-1gpu.yaml after the recipe" >&2; exit 2 ;;
esac
rm -rf "$DATA" "$RUNDIR" "$LOGDIR"
mkdir -p "$DATA" "$TRAIN" "$QUANT"
begin_stages "recipe $RECIPE"

stages() {
    tokenize_data &&
    build_artifact &&
    stage_cmd size_check && run_stage size_check python "${STAGE_CMD[@]}" &&
    stage_cmd evaluate --set "params.config=$CFG/eval.json" --drop=--prequant &&
    run_stage evaluate "${LAUNCH[@]}" "${STAGE_CMD[@]}"
}
stages
rc=$?

for f in "$QUANT/eval.json" "$QUANT/size.json" "$QUANT/pack.json" "$LOGDIR/stages.tsv"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done
for f in "$LOGDIR"/*.log; do
    [ -f "$f" ] && { echo "== $f"; tail -n 15 "$f"; }
done >"$OUT/logs.txt"
cat "$LOGDIR/stages.tsv"
python - "$QUANT" <<'PY' || { [ "$rc" -eq 0 ] && rc=1; }
import json, sys
from pathlib import Path
quant = Path(sys.argv[1])
size = json.loads((quant / "size.json").read_text())
ev = json.loads((quant / "eval.json").read_text())
s = ev["seconds"]
timed = s.get("eval_timer", s.get("quantized_eval"))
print(f"eval seconds {timed:.1f} (timed; load {s['load']:.1f}, warmup {s.get('warmup', 0):.1f}, "
      f"quantized diagnostic {s['quantized_eval']:.1f}), projected 8-GPU full val {ev['projected_8gpu_seconds']:.0f} s; "
      f"size {size['total_bytes']:,} bytes (model {size['model_bytes']:,} + code {size['code_bytes']:,}); "
      f"final_bpb {ev['final_bpb']:.5f} over {ev['scored']:,} targets; "
      f"score-first probe passed {ev['probes']['score_first'].get('passed') if isinstance(ev['probes']['score_first'], dict) else ev['probes']['score_first']}")
PY
exit "$rc"
