#!/usr/bin/env bash
# GPU fidelity proof (one device call, one H100 or H200): pgolf's bench-1gpu recipe for 60 steps with upstream's step
# schedule (steps schedule over 60, looping from step 21, warmdown 0.85), every training loss logged, the raw
# (pre-EMA) weights' val_bpb after step 60 and the post-EMA pre-quantization val_bpb (eval_prequant), then
# bench/fidelity_compare.py against upstream #1855's log of the same run on the same shards.
#
# Stages, with the rules' arguments: tokenizer, tokenize (the bench corpus, byte-identical to upstream's shards),
# audit_data, train, eval_prequant. Files under $OUT:
#   fidelity.md      the side-by-side table and the verdict on the targets (printed too)
#   log.jsonl        pgolf's training log (a record per step, raw_val after the last)
#   prequant.json    the post-EMA pre-quantization score
#   summary.json     the train summary (device, steps, seconds)
#   stages.tsv       wall seconds and exit status of each stage
#   logs.txt         the tail of every stage's log
#
# Prepare here (jsonschema is missing there):
#   bash bench/prepare.sh && python bench/device_configs.py --out .device/fidelity recipes/bench-1gpu.yaml bench/fidelity.yaml
#   and the anchors' upstream-1855 folder copied to bench/upstream/ (for h100-60steps.log)
# There: OUT=... bash bench/gpu_fidelity.sh   (carry .whl .deb bench/data .device bench/upstream)
#   UPSTREAM_LOG=path   another upstream log to compare with (default bench/upstream/h100-60steps.log)
# CPU dry run here: bash bench/gpu_fidelity_dryrun.sh
export PGOLF_DEVICE_CONFIGS=${PGOLF_DEVICE_CONFIGS:-.device/fidelity}
source "$(dirname "$0")/device_common.sh"

UPSTREAM_LOG=${UPSTREAM_LOG:-bench/upstream/h100-60steps.log}
if [ ! -f "$UPSTREAM_LOG" ]; then
    echo "$UPSTREAM_LOG: missing; copy the anchors' upstream-1855 folder to bench/upstream/ and carry it" >&2
    exit 2
fi
LOGDIR=logs/device/fidelity
# A fresh start: no stale checkpoint.pt to resume, no compile cache from an earlier call on a warm machine.
rm -rf "$DATA" "$RUNDIR" "$LOGDIR"
mkdir -p "$DATA" "$TRAIN"
begin_stages "fidelity: 60 steps against $UPSTREAM_LOG"

tokenize_data &&
    stage_cmd audit_data --set "params.config=$CFG/audit.json" &&
    run_stage audit_data python "${STAGE_CMD[@]}" &&
    stage_cmd train --set "params.config=$CFG/train.json" &&
    run_stage train env OMP_NUM_THREADS="$OMP_PER_RANK" "${LAUNCH[@]}" "${STAGE_CMD[@]}" &&
    stage_cmd eval_prequant --set "params.config=$CFG/eval.json" &&
    run_stage eval_prequant "${LAUNCH[@]}" "${STAGE_CMD[@]}"
rc=$?

for f in "$P_TRAIN_LOG" "$P_TRAIN_LOG.partial" "$P_PREQUANT" "$P_TRAIN_SUMMARY" "$LOGDIR/stages.tsv"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done
for f in "$LOGDIR"/*.log; do
    [ -f "$f" ] && { echo "== $f"; tail -n 40 "$f"; }
done >"$OUT/logs.txt"
if [ -f "$P_TRAIN_LOG" ]; then
    python bench/fidelity_compare.py --pgolf-log "$P_TRAIN_LOG" --prequant "$P_PREQUANT" \
        --upstream "$UPSTREAM_LOG" | tee "$OUT/fidelity.md"
    compare_rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] && rc=$compare_rc
fi
cat "$LOGDIR/stages.tsv"
exit "$rc"
