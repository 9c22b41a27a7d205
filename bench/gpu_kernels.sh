#!/usr/bin/env bash
# Device call: the kernel microbenchmark bench/flex_options.py on the bench corpus's first micro-batch, then
# bench/flex_mask_compiled.py (the flex block mask built by torch.compile against eager code).
# Files under $OUT: flex_options.json, flex_mask_compiled.json, kernels.log, stages.tsv.
#   Here:  bash bench/prepare.sh && python bench/device_configs.py
#   There: OUT=... bash bench/gpu_kernels.sh (carry .whl .deb bench/data .device)
source "$(dirname "$0")/device_common.sh"

LOGDIR=logs/device/kernels
rm -rf "$DATA" "$LOGDIR"
mkdir -p "$DATA"
begin_stages
tokenize_data || exit 1
run_stage flex_options python bench/flex_options.py --manifest "$P_MANIFEST" --out "$OUT/flex_options.json"
rc=$?
run_stage flex_mask_compiled python bench/flex_mask_compiled.py --manifest "$P_MANIFEST" \
    --out "$OUT/flex_mask_compiled.json" || rc=$?
grep -hv Warning "$LOGDIR/flex_options.log" "$LOGDIR/flex_mask_compiled.log" | tee "$OUT/kernels.log"
cp "$LOGDIR/stages.tsv" "$OUT/"
exit "$rc"
