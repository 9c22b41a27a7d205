#!/usr/bin/env bash
# Device call 1 of 2: train briefly, collect Hessians, quantize, pack (recipes/bench-1gpu.yaml on the lent GPU).
#
# Runs the DAG's stages directly as `python -m pgolf.<stage>`, in a topological order of the rules and with the
# rules' arguments (rules/*.smk): tokenizer, tokenize, audit_data, train, hessians, quantize (the submission
# preset), pack, code, size_check, eval_prequant. The artifact comes first: without prequant.json the second call
# still scores it (only quantized minus prequant is then missing). The first failing stage stops the run (except
# that eval_prequant still runs after a size_check over the cap), and a
# stage still running at PGOLF_DEADLINE_S (default 560 s) is killed; what exists still comes back. Files under
# $OUT (8 at most):
#   model.pgrp pack.json size.json prequant.json   what bench/gpu_evaluate.sh needs (carry them in .device/from_experiment/)
#   report.json      the quantize stage's report
#   stages.json      wall seconds and exit status of each stage
#   experiment.json  stages + train summary and log + hessians.json + prequant + pack + size + audit + manifest
#   logs.txt         the tail of every stage's log (more of the failing one)
#
# Prepare here (jsonschema is missing there):  bash bench/prepare.sh && python bench/device_configs.py
# There: OUT=... bash bench/gpu_experiment.sh   (carry .whl .deb bench/data .device)
# CPU dry run here: bash bench/gpu_dryrun.sh
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/experiment
case "$PG_DATA_SOURCE" in
    local | builtin) ;;
    *) echo "data.source $PG_DATA_SOURCE needs the network; the device experiment takes local or builtin data" >&2; exit 2 ;;
esac
# A fresh start: no stale checkpoint.pt to resume, no compile cache from an earlier call on a warm machine.
rm -rf "$DATA" "$RUNDIR" "$LOGDIR"
mkdir -p "$DATA" "$TRAIN" "$QUANT"
begin_stages

stages() {
    tokenize_data &&
    build_artifact &&
    {
        # over the cap, size_check fails with the byte breakdown; the prequant score (independent of it) still runs
        stage_cmd size_check && run_stage size_check python "${STAGE_CMD[@]}"
        local size_rc=$?
        stage_cmd eval_prequant --set "params.config=$CFG/eval.json" &&
            run_stage eval_prequant "${LAUNCH[@]}" "${STAGE_CMD[@]}" && return "$size_rc"
    }
}
stages
rc=$?

# What came out, even after a failure: the files the second call needs, the report, and the summaries.
for f in "$P_PGRP" "$P_PACK_INFO" "$P_SIZE" "$P_PREQUANT" "$P_QUANT_REPORT"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done
python bench/device_report.py experiment --out "$OUT" --logs "$LOGDIR" --configs "$CFG" --data "$DATA" \
    --train "$TRAIN" --quant "$QUANT" --rc "$rc" || { [ "$rc" -eq 0 ] && rc=1; }
exit "$rc"
