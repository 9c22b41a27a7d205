#!/usr/bin/env bash
# bench/gpu_pr1512.sh on this machine's CPU, in a minute or two: the first 500 bench documents, the smoke model's
# sizes with #1512's pieces (recipes/smoke-pr1512.yaml's layers), 8 steps of 1,024 tokens, QAT from step 5.
#   bash bench/prepare.sh && bash bench/pr1512_dryrun.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${PGOLF_DRYRUN_DIR:-/tmp/pgolf-pr1512-dryrun}
rm -rf "$W"
mkdir -p "$W"
python - "$W/bench-docs-500.parquet" <<'PY'
import sys
import pyarrow.parquet as pq
pq.write_table(pq.read_table("bench/data/bench-docs.parquet").slice(0, 500), sys.argv[1])
PY
cat >"$W/cpu-dryrun.yaml" <<YAML
run: {name: pr1512-dryrun}
hardware: {gpus: 0, cpu_procs: 1}
data: {name: pr1512-dryrun, val_docs: 40, shard_tokens: 100000, vocab_size: 512, tokenizer_train_docs: null,
       local: {path: $W/bench-docs-500.parquet}}
model: {vocab_size: 512, num_layers: 5, model_dim: 64, num_heads: 4, num_kv_heads: 2, mlp_mult: 2.0, rope_dims: 8,
        xsa_last_n: 5, value_embed_layers: [3, 4], attn_window: 32, attn_window_layers: [0, 1, 2],
        rope_train_len: 64, train_seq_len: 128}
train: {steps: 8, warmdown_steps: 8, batch_tokens: 1024, ema_decay: 0.9, log_every: 2}
eval: {seq_len: 128, val_docs_limit: 20}
YAML
python bench/device_configs.py --out "$W/configs" recipes/bench-1gpu.yaml recipes/pr1512.yaml \
    recipes/bench-pr1512.yaml "$W/cpu-dryrun.yaml"
PGOLF_DEVICE_CONFIGS=$W/configs OUT=$W/out bash bench/gpu_pr1512.sh
python - "$W/out/pr1512.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["qat_from_step"] == 5 and r["seq_len"] == 128 and r["ms_per_step_before_qat"] > 0, r
print("dry run ok:", r)
PY
