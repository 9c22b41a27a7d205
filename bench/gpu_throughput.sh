#!/usr/bin/env bash
# Device call: training throughput of the record model on one GPU (bench/train_throughput.py) on the bench corpus.
# Tokenizes as the DAG does (tokenizer, tokenize), then measures; extra arguments go to bench/train_throughput.py.
# Files under $OUT: throughput.json (every figure), throughput.log (its output), stages.tsv.
#   Here:  bash bench/prepare.sh && python bench/device_configs.py
#   There: OUT=... bash bench/gpu_throughput.sh [--steps N] (carry .whl .deb bench/data .device)
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/throughput
rm -rf "$DATA" "$P_COMPILE_CACHE" "$LOGDIR"
mkdir -p "$DATA"
begin_stages
tokenize_data || exit 1
timeout -k 10 $((DEADLINE_S - 20)) python bench/train_throughput.py --manifest "$P_MANIFEST" \
    --cache "$P_COMPILE_CACHE" --profile --out "$OUT/throughput.json" "$@" 2>&1 | tee "$OUT/throughput.log"
rc=$?
cp "$LOGDIR/stages.tsv" "$OUT/"
exit "$rc"
