#!/usr/bin/env bash
# Device call 2 of 2: score the model.pgrp that bench/gpu_experiment.sh brought back (recipes/bench-1gpu.yaml).
#
# Re-tokenizes the corpus (tokenizer, tokenize: deterministic, so the val shards equal call 1's; the table says
# whether their sha256s match), then runs the evaluate rule's `python -m pgolf.evaluate artifact` on the first
# call's model.pgrp, pack.json, size.json and prequant.json (if call 1 got that far): the quantized diagnostic score (so quantized minus
# prequant) and the timed phased TTT eval. Files under $OUT:
#   eval.json        pgolf.evaluate's output (seconds per phase inside)
#   evaluation.json  stages, quantized - prequant, the eval summary, whether val shards and configs match call 1
#   stages.json      wall seconds and exit status of each stage
#   logs.txt         the tail of every stage's log
#
# Here: copy call 1's files into .device/from_experiment/ (or set PGOLF_FROM_EXPERIMENT), carry .device.
# There: OUT=... bash bench/gpu_evaluate.sh   (carry .whl .deb bench/data .device)
source "$(dirname "$0")/device_common.sh"

FROM=${PGOLF_FROM_EXPERIMENT:-.device/from_experiment}
LOGDIR=logs/device/evaluate
for f in model.pgrp pack.json size.json; do
    if [ ! -f "$FROM/$f" ]; then
        echo "$FROM/$f: missing; copy the first call's files (bench/gpu_experiment.sh's \$OUT) there and carry .device" >&2
        exit 2
    fi
done
PREQUANT=(--drop=--prequant)
if [ -f "$FROM/prequant.json" ]; then
    PREQUANT=(--set "input.prequant=$FROM/prequant.json")
else
    echo "$FROM/prequant.json: missing (eval_prequant did not finish in call 1); scoring without it"
fi
rm -rf "$DATA" "$LOGDIR" "$P_EVAL"
mkdir -p "$DATA" "$QUANT"
begin_stages "artifact $FROM/model.pgrp"

stages() {
    tokenize_data &&
    stage_cmd evaluate --set "params.config=$CFG/eval.json" --set "input.pgrp=$FROM/model.pgrp" \
        --set "input.info=$FROM/pack.json" --set "input.size_json=$FROM/size.json" "${PREQUANT[@]}" &&
        run_stage evaluate "${LAUNCH[@]}" "${STAGE_CMD[@]}"
}
stages
rc=$?

[ -f "$P_EVAL" ] && cp "$P_EVAL" "$OUT/"
python bench/device_report.py evaluate --out "$OUT" --logs "$LOGDIR" --configs "$CFG" --data "$DATA" \
    --experiment "$FROM" --eval "$P_EVAL" --rc "$rc" || { [ "$rc" -eq 0 ] && rc=1; }
exit "$rc"
