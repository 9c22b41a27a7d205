#!/usr/bin/env bash
# Device call: training throughput of the record model on one GPU (bench/train_throughput.py) on the bench corpus.
# Tokenizes as the DAG does (tokenizer, tokenize), then measures; extra arguments go to bench/train_throughput.py.
# Files under $OUT: throughput.json (every figure), throughput.log (its output), stages.tsv.
#   Here:  bash bench/prepare.sh && python bench/device_configs.py
#   There: OUT=... bash bench/gpu_throughput.sh [--steps N] (carry .whl .deb bench/data .device)
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/throughput
rm -rf "$DATA" "$RUNDIR/compile_cache" "$LOGDIR"
mkdir -p "$LOGDIR" "$DATA"
printf 'setup\t%s\t0\n' "$T_SETUP" >"$LOGDIR/stages.tsv"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null
# shellcheck disable=SC2086  # PG_DOCS_OPTION is a word list
run_stage tokenizer python -m pgolf.tokenizer --config "$CFG/data.json" $PG_DOCS_OPTION \
    --out "$DATA/tokenizer.model" &&
    run_stage tokenize python -m pgolf.tokenize --config "$CFG/data.json" $PG_DOCS_OPTION \
        --tokenizer "$DATA/tokenizer.model" --workers "$NPROC" --out "$DATA/manifest.json" || exit 1
timeout -k 10 $((DEADLINE_S - 20)) python bench/train_throughput.py --manifest "$DATA/manifest.json" --cache "$RUNDIR/compile_cache" --profile \
    --out "$OUT/throughput.json" "$@" 2>&1 | tee "$OUT/throughput.log"
rc=$?
cp "$LOGDIR/stages.tsv" "$OUT/"
exit "$rc"
