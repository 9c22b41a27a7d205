#!/usr/bin/env bash
# One device call: train briefly, collect Hessians, then compare the record preset with the capfit preset at the
# same byte target (bench/capfit_compare.py): exact bytes, proxy, quantized val_bpb, the search's seconds.
#
# Runs the DAG's stages as `python -m pgolf.<stage>` with the rules' arguments from pgolf.stages (tokenizer,
# tokenize, audit_data, train, hessians), then bench/capfit_compare.py on model.pt and hessians.pt. A stage still running at
# PGOLF_DEADLINE_S (default 560 s) is killed; what exists still comes back. Files under $OUT:
#   capfit_compare.json  target, both presets' bytes, proxy and quantized score, the search's seconds and cache
#   capfit.json          every candidate of the search (the capfit stage's output)
#   stages.json, logs.txt  wall seconds and exit status of each stage; the tail of every stage's log
#
# Prepare here:  bash bench/prepare.sh && python bench/device_configs.py recipes/bench-1gpu.yaml bench/capfit-bench.yaml
# There: OUT=... bash bench/gpu_capfit.sh   (carry .whl .deb bench/data .device)
# CPU dry run here: bash bench/gpu_dryrun.sh capfit
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/capfit
rm -rf "$DATA" "$RUNDIR" "$LOGDIR"
mkdir -p "$DATA" "$TRAIN"
begin_stages "capfit comparison"

stages() {
    tokenize_data &&
    stage_cmd audit_data --set "params.config=$CFG/audit.json" &&
    run_stage audit_data python "${STAGE_CMD[@]}" &&
    stage_cmd train --set "params.config=$CFG/train.json" &&
    run_stage train env OMP_NUM_THREADS="$OMP_PER_RANK" "${LAUNCH[@]}" "${STAGE_CMD[@]}" &&
    stage_cmd hessians --set "params.config=$CFG/hessians.json" &&
    run_stage hessians env OMP_NUM_THREADS="$OMP_PER_RANK" "${LAUNCH[@]}" "${STAGE_CMD[@]}" &&
    # every core for lrzip, as the pack rule runs it
    run_stage capfit_compare env -u OMP_NUM_THREADS python bench/capfit_compare.py --config "$CFG/resolved.json" \
        --model "$TRAIN/model.pt" --hessians "$TRAIN/hessians.pt" --manifest "$DATA/manifest.json" \
        --baseline "$PG_PRESET" --out-dir "$OUT"
}
stages
rc=$?

python bench/device_report.py stages --out "$OUT" --logs "$LOGDIR" --rc "$rc" || { [ "$rc" -eq 0 ] && rc=1; }
tail -n 12 "$LOGDIR/capfit_compare.log" 2>/dev/null
exit "$rc"
