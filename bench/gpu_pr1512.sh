#!/usr/bin/env bash
# Device call: #1512's recipe trained 60 steps at 4,096 tokens on the bench corpus (recipes/bench-pr1512.yaml), the
# late-QAT trigger scaled to switch on at step 31; prints ms/step before and with QAT and the peak memory
# (bench/qat_probe.py). Files under $OUT: pr1512.json (the figures), train.log (the stage's output), log.jsonl,
# summary.json, stages.tsv.
#   Here:  bash bench/prepare.sh && python bench/device_configs.py --out .device/pr1512 \
#              recipes/bench-1gpu.yaml recipes/pr1512.yaml recipes/bench-pr1512.yaml
#   There: PGOLF_DEVICE_CONFIGS=.device/pr1512 OUT=... bash bench/gpu_pr1512.sh   (carry .whl .deb bench/data .device)
#   CPU dry run here: bash bench/pr1512_dryrun.sh
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/pr1512
rm -rf "$DATA" "$RUNDIR" "$LOGDIR"
mkdir -p "$DATA" "$TRAIN"
begin_stages
tokenize_data &&
    stage_cmd audit_data --set "params.config=$CFG/audit.json" &&
    run_stage audit_data python "${STAGE_CMD[@]}" &&
    stage_cmd train --set "params.config=$CFG/train.json" &&
    run_stage train env OMP_NUM_THREADS="$OMP_PER_RANK" "${LAUNCH[@]}" "${STAGE_CMD[@]}" &&
    python bench/qat_probe.py "$TRAIN" --out "$OUT/pr1512.json"
rc=$?
for f in "$P_TRAIN_LOG" "$P_TRAIN_SUMMARY" "$LOGDIR/stages.tsv"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done
[ -f "$LOGDIR/train.log" ] && tail -n 200 "$LOGDIR/train.log" >"$OUT/train.log"
exit "$rc"
