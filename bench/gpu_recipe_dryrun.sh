#!/usr/bin/env bash
# bench/gpu_recipe.sh RECIPE end to end on this machine's CPU, as the lead runs it on the lent GPU: the recipe, then
# recipes/bench-1gpu.yaml, then a CPU overlay (the first 500 bench documents with 40 val, the smoke model's sizes, 6
# steps, 128-token windows, 1,024-token TTT chunks). Everything lives under $PGOLF_DRYRUN_DIR (default
# /tmp/pgolf-recipe-dryrun), apart from the stages' usual outputs (resources/data/bench-dryrun, results/bench-dryrun).
#   bash bench/prepare.sh && bash bench/gpu_recipe_dryrun.sh pr1572
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${1:?usage: bash bench/gpu_recipe_dryrun.sh RECIPE}
W=${PGOLF_DRYRUN_DIR:-/tmp/pgolf-recipe-dryrun}
rm -rf "$W"
mkdir -p "$W"
python - "$W/bench-docs-500.parquet" <<'PY'
import sys
import pyarrow.parquet as pq
pq.write_table(pq.read_table("bench/data/bench-docs.parquet").slice(0, 500), sys.argv[1])
PY
cat >"$W/cpu-dryrun.yaml" <<YAML
run: {name: bench-dryrun}
hardware: {gpus: 0, cpu_procs: 1}
data:
  name: bench-dryrun
  val_docs: 40
  shard_tokens: 100000
  local: {path: $W/bench-docs-500.parquet}
model: {num_layers: 5, model_dim: 64, num_heads: 4, num_kv_heads: 2, mlp_mult: 2.0, rope_dims: 8, xsa_last_n: 5,
        num_loops: 1, loop_start: 1, loop_end: 2, parallel_start_layer: 3, train_seq_len: 128}
hessians: {calibration_batches: 2, batch_seqs: 4, seq_len: 128}
train: {steps: 6, batch_tokens: 4096, ema_decay: 0.9, log_every: 2}
eval:
  seq_len: 128
  sliding_stride: 32
  batch_tokens: 4096
  val_docs_limit: 20
  ttt: {seq_len: 128, chunk_size: 64, short_doc_chunks: [[64, 16]], batch_size: 8, lora_rank: 4, lora_alpha: 8.0,
        phases: 1, prefix_docs: 8, global_chunk_tokens: 1024, global_batch_seqs: 8, window_multiple: 32,
        probe_batches: 1}
YAML
python bench/device_configs.py --out "$W/configs" "recipes/$RECIPE.yaml" recipes/bench-1gpu.yaml "$W/cpu-dryrun.yaml"
# a CPU shared with other work trains slowly: a longer stage deadline than the device's 560 s
PGOLF_DEADLINE_S=${PGOLF_DEADLINE_S:-3000} PGOLF_DEVICE_CONFIGS=$W/configs OUT=$W/out bash bench/gpu_recipe.sh "$RECIPE"

# What the device would give back: at most 8 plain files, 16 MiB each.
n=$(find "$W/out" -type f | wc -l)
big=$(find "$W/out" -type f -size +16M | wc -l)
echo "$W/out: $n files ($(du -sh "$W/out" | cut -f1)), $big over 16 MiB"
[ "$n" -le 8 ] && [ "$big" -eq 0 ] || { echo "too much in $W/out for the device's \$OUT" >&2; exit 1; }
