#!/usr/bin/env bash
# Both device calls end to end on this machine's CPU, in minutes: bench/gpu_experiment.sh, then bench/gpu_evaluate.sh
# on what the first wrote to its $OUT, as the lead runs them on the lent GPU. recipes/bench-1gpu.yaml plus a CPU
# overlay: the first 500 bench documents (40 val), the smoke model's sizes with the canonical 8,192-piece
# tokenizer, 6 steps, a small eval. Everything lives under $PGOLF_DRYRUN_DIR (default /tmp/pgolf-dryrun), apart
# from the stages' usual outputs (resources/data/bench-dryrun, results/bench-dryrun, logs/device/).
#   bash bench/prepare.sh && bash bench/gpu_dryrun.sh
#   bash bench/gpu_dryrun.sh capfit      (bench/gpu_capfit.sh instead, with bench/capfit-bench.yaml's search space)
set -euo pipefail
MODE=${1:-experiment}
cd "$(dirname "$0")/.."
W=${PGOLF_DRYRUN_DIR:-/tmp/pgolf-dryrun}
rm -rf "$W"
mkdir -p "$W"
python - "$W/bench-docs-500.parquet" <<'EOF'
import sys
import pyarrow.parquet as pq
pq.write_table(pq.read_table("bench/data/bench-docs.parquet").slice(0, 500), sys.argv[1])
EOF
cat >"$W/cpu-dryrun.yaml" <<EOF
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
  batch_tokens: 4096
  val_docs_limit: 20
  ttt: {seq_len: 128, chunk_size: 64, short_doc_chunks: [[64, 16]], batch_size: 8, lora_rank: 4, lora_alpha: 8.0,
        phases: 1, prefix_docs: 8, global_chunk_tokens: 1024, global_batch_seqs: 8, window_multiple: 32,
        probe_batches: 1}
EOF
if [ "$MODE" = capfit ]; then
    python bench/device_configs.py --out "$W/configs" recipes/bench-1gpu.yaml bench/capfit-bench.yaml "$W/cpu-dryrun.yaml"
else
    python bench/device_configs.py --out "$W/configs" recipes/bench-1gpu.yaml "$W/cpu-dryrun.yaml"
fi
export PGOLF_DEVICE_CONFIGS=$W/configs PGOLF_FROM_EXPERIMENT=$W/from_experiment

if [ "$MODE" = capfit ]; then
    echo "== one call: bench/gpu_capfit.sh"
    # no 10-minute limit here, and Inductor's CPU compile of training alone can take most of one on two cores
    OUT=$W/out PGOLF_DEADLINE_S=${PGOLF_DEADLINE_S:-3600} bash bench/gpu_capfit.sh
    n=$(find "$W/out" -type f | wc -l)
    echo "$W/out: $n files ($(du -sh "$W/out" | cut -f1))"
    [ "$n" -le 8 ] && [ -f "$W/out/capfit_compare.json" ] || { echo "capfit_compare.json missing from $W/out" >&2; exit 1; }
    exit 0
fi
echo "== call 1: bench/gpu_experiment.sh"
OUT=$W/out1 bash bench/gpu_experiment.sh
mkdir -p "$W/from_experiment"
cp "$W"/out1/* "$W/from_experiment/"
echo "== call 2: bench/gpu_evaluate.sh"
OUT=$W/out2 bash bench/gpu_evaluate.sh

# What the device would give back: at most 8 plain files per call, 16 MiB each.
for d in "$W/out1" "$W/out2"; do
    n=$(find "$d" -type f | wc -l)
    big=$(find "$d" -type f -size +16M | wc -l)
    echo "$d: $n files ($(du -sh "$d" | cut -f1)), $big over 16 MiB"
    [ "$n" -le 8 ] && [ "$big" -eq 0 ] || { echo "too much in $d for the device's \$OUT" >&2; exit 1; }
done
