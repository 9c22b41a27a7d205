#!/usr/bin/env bash
# bench/gpu_fidelity.sh end to end on this machine's CPU, in minutes, as the lead runs it on the lent GPU:
# recipes/bench-1gpu.yaml + bench/fidelity.yaml plus a CPU overlay (the first 500 bench documents, 40 val; the smoke
# model's sizes with the canonical tokenizer; 3 steps of 1,024 tokens, looping from step 2, 10 val documents). A loaded
CPU can take minutes a step, so the stages' deadline is PGOLF_DEADLINE_S (default 3000 s here). The comparison's verdict is FAIL here
# (another model); the dry run checks that every stage runs and every figure reaches the table.
# Everything lives under $PGOLF_DRYRUN_DIR (default /tmp/pgolf-fidelity-dryrun), apart from the stages' usual outputs
# (resources/data/bench-dryrun, results/bench-fidelity-dryrun, logs/device/fidelity).
#   bash bench/prepare.sh && bash bench/gpu_fidelity_dryrun.sh   (bench/upstream/h100-60steps.log copied beforehand)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${PGOLF_DRYRUN_DIR:-/tmp/pgolf-fidelity-dryrun}
rm -rf "$W"
mkdir -p "$W"
python - "$W/bench-docs-500.parquet" <<'PY'
import sys
import pyarrow.parquet as pq
pq.write_table(pq.read_table("bench/data/bench-docs.parquet").slice(0, 500), sys.argv[1])
PY
cat >"$W/cpu-dryrun.yaml" <<YAML
run: {name: bench-fidelity-dryrun}
hardware: {gpus: 0, cpu_procs: 1}
data:
  name: bench-dryrun
  val_docs: 40
  shard_tokens: 100000
  local: {path: $W/bench-docs-500.parquet}
model: {num_layers: 5, model_dim: 64, num_heads: 4, num_kv_heads: 2, mlp_mult: 2.0, rope_dims: 8, xsa_last_n: 5,
        num_loops: 1, loop_start: 1, loop_end: 2, parallel_start_layer: 3, train_seq_len: 128}
train: {steps: 3, batch_tokens: 1024}
eval: {seq_len: 128, batch_tokens: 4096, val_docs_limit: 10}
YAML
python bench/device_configs.py --out "$W/configs" recipes/bench-1gpu.yaml bench/fidelity.yaml "$W/cpu-dryrun.yaml"
set +e
OUT=$W/out PGOLF_DEVICE_CONFIGS=$W/configs PGOLF_DEADLINE_S=${PGOLF_DEADLINE_S:-3000} bash bench/gpu_fidelity.sh
rc=$?
set -e
for f in fidelity.md log.jsonl prequant.json summary.json stages.tsv logs.txt; do
    [ -f "$W/out/$f" ] || { echo "dry run: $W/out/$f missing" >&2; exit 1; }
done
grep -q "raw weights val_bpb | 1.610200 | [0-9]" "$W/out/fidelity.md" || { echo "dry run: no raw val_bpb in the table" >&2; exit 1; }
grep -q "post-EMA pre-quant val_bpb | 3.940669 | [0-9]" "$W/out/fidelity.md" || { echo "dry run: no post-EMA val_bpb" >&2; exit 1; }
echo "dry run: every stage ran and every figure reached the table (gpu_fidelity.sh exit $rc: 1 = targets missed, expected on CPU)"
[ "$rc" -le 1 ]
