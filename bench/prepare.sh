#!/usr/bin/env bash
# Copy the bench corpus and the canonical CaseOps tokenizer into bench/data/ (git-ignored), where
# recipes/bench-1gpu.yaml reads them and from where they travel to the lent H100.
#   bash bench/prepare.sh [SHARED_DIR]        (default: ../shared beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared}
mkdir -p bench/data
cp "$shared/corpus/bench-docs.parquet" bench/data/
cp "$shared/reference/upstream-1855/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model" bench/data/
ls -l bench/data
