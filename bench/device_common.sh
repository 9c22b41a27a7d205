# Shared set-up of bench/gpu_experiment.sh and bench/gpu_evaluate.sh (sourced, never run): the carried wheels
# (flash-attn-4's too, bench/fa4_site.sh) and lrzip, the stage configs written here by bench/device_configs.py, and
# run_stage (one timed, logged stage).
#   PGOLF_DEVICE_CONFIGS  folder of the stage configs (default .device/configs)
#   PGOLF_ALLOW_CPU=1     run configs with hardware.gpus 0 on a machine that has a GPU (CPU dry run)
#   PGOLF_DEADLINE_S      seconds after the script's start at which a running stage is killed (default 560), so the
#                         summaries still reach $OUT inside the device's 10-minute limit
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
T_SCRIPT=$EPOCHREALTIME
DEADLINE_S=${PGOLF_DEADLINE_S:-560}

CFG=${PGOLF_DEVICE_CONFIGS:-.device/configs}
if [ ! -f "$CFG/vars.sh" ]; then
    echo "$CFG/vars.sh: missing; run 'python bench/device_configs.py' on the development machine and carry .device" >&2
    exit 2
fi
# shellcheck source=/dev/null
source "$CFG/vars.sh"

# The machine must match the configs: GPU configs on a GPU machine, CPU dry-run configs only where there is none.
if [ "$PG_GPUS" -gt 0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "$CFG: hardware.gpus is $PG_GPUS but no GPU is visible here (nvidia-smi -L failed)" >&2
    exit 2
fi
if [ "$PG_GPUS" -eq 0 ] && nvidia-smi -L >/dev/null 2>&1 && [ "${PGOLF_ALLOW_CPU:-0}" != 1 ]; then
    echo "$CFG: hardware.gpus is 0 (a CPU dry run's configs?) on a GPU machine; re-run 'python bench/device_configs.py'" >&2
    exit 2
fi

# A plain `python` for the stages (the GPU image has only python3); the carried wheels when the modules are missing.
PY=$(command -v python3 || command -v python)
if ! command -v python >/dev/null 2>&1; then
    # a wrapper, not a symlink: a virtual environment's python3 finds its pyvenv.cfg only under its own path
    mkdir -p /tmp/pgolf-bin && printf '#!/bin/sh\nexec %q "$@"\n' "$PY" >/tmp/pgolf-bin/python &&
        chmod +x /tmp/pgolf-bin/python && export PATH=/tmp/pgolf-bin:$PATH
fi
if ! "$PY" -c 'import brotli, python_minifier' 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "brotli / python-minifier missing and no .whl/*.whl carried" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -c 'import brotli, python_minifier' || { echo "the carried wheels in .whl/ do not import" >&2; exit 2; }
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# flash-attn-4 where bench/fa4_carry.sh's parts came (this call or the one before on the same machine)
if [ -d .fa4a ] || [ -d .fa4b ] || [ -d .fa4site ]; then
    # shellcheck source=bench/fa4_site.sh
    source bench/fa4_site.sh
fi
if ! command -v lrzip >/dev/null 2>&1; then
    if ! compgen -G ".deb/*.deb" >/dev/null; then
        echo "lrzip missing and no .deb/*.deb carried" >&2
        exit 2
    fi
    for f in .deb/*.deb; do dpkg -x "$f" /tmp/lrz || exit 2; done
    # liblzo2 ships under /lib, liblz4 under /usr/lib
    export PATH=/tmp/lrz/usr/bin:$PATH
    export LD_LIBRARY_PATH=/tmp/lrz/lib/x86_64-linux-gnu:/tmp/lrz/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
T_SETUP=$(awk -v a="$T_SCRIPT" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')

# Every path and stage command comes from pgolf/stages.py, the table the rules read: P_MANIFEST, P_TRAIN_DIR, ...
eval "$(python -m pgolf.stages paths --ds "$PG_DS" --name "$PG_RUN" --seed "$PG_SEED" --preset "$PG_PRESET")" || exit 2
DATA=$P_DATA_DIR RUNDIR=$P_RUN_DIR TRAIN=$P_TRAIN_DIR QUANT=$P_QUANT_DIR
LAUNCH=(python -m pgolf.launch --gpus "$PG_GPUS" --cpu-procs "$PG_CPU_PROCS" --)
NPROC=$(nproc)
# threads of the train and hessians rules (4 per rank, capped at the cores as Snakemake caps them), per rank
THREADS=$((4 * PG_RANKS < NPROC ? 4 * PG_RANKS : NPROC))
OMP_PER_RANK=$(((THREADS + PG_RANKS - 1) / PG_RANKS))

# the options of the tokenizer/tokenize rules' `--docs`: only the hub's docs.jsonl is named on the command line
if [ "$PG_DATA_SOURCE" = hf_docs ]; then DOCS=(--set "input.docs=$P_HUB_DOCS"); else DOCS=(--drop=--docs); fi

# stage_cmd STAGE [--set FIELD=VALUE | --drop OPTION]...: STAGE_CMD=(-m pgolf.<module> ARGS...), the command the
# rule runs (python -m pgolf.stages argv), with this run's wildcards and the given values
stage_cmd() {
    local stage=$1
    shift
    mapfile -t STAGE_CMD < <(python -m pgolf.stages argv "$stage" --ds "$PG_DS" --name "$PG_RUN" --seed "$PG_SEED" \
        --preset "$PG_PRESET" "$@")
    [ "${#STAGE_CMD[@]}" -gt 0 ] || { echo "python -m pgolf.stages argv $stage failed" >&2; return 2; }
}

# run_stage NAME COMMAND...: run one stage with its output in $LOGDIR/NAME.log, append "NAME seconds rc" to
# $LOGDIR/stages.tsv; returns the stage's exit status. A stage still running at the deadline is killed with its
# whole process group (torchrun's ranks, lrzip) and reports exit 124.
run_stage() {
    local name=$1 t0 rc left
    shift
    left=$(awk -v a="$T_SCRIPT" -v b="$EPOCHREALTIME" -v d="$DEADLINE_S" 'BEGIN { printf "%d", d - (b - a) }')
    t0=$EPOCHREALTIME
    if [ "$left" -lt 5 ]; then
        echo "not started: ${DEADLINE_S} s deadline (PGOLF_DEADLINE_S) reached" >"$LOGDIR/$name.log"
        rc=124
    else
        echo "[$(date +%T)] $name (${left} s left): $*"
        timeout -k 10 "$left" "$@" >"$LOGDIR/$name.log" 2>&1
        rc=$?
        [ "$rc" -eq 124 ] && echo "killed at the ${DEADLINE_S} s deadline (PGOLF_DEADLINE_S)" >>"$LOGDIR/$name.log"
    fi
    printf '%s\t%s\t%s\n' "$name" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')" "$rc" \
        >>"$LOGDIR/stages.tsv"
    if [ "$rc" -ne 0 ]; then
        echo "[$(date +%T)] $name FAILED (exit $rc); last lines of $LOGDIR/$name.log:"
        tail -n 30 "$LOGDIR/$name.log"
    fi
    return "$rc"
}

# begin_stages [NOTE]: a fresh $LOGDIR with the setup time as its first stage, and the machine described in
# $LOGDIR/machine.txt (and on stdout).
begin_stages() {
    mkdir -p "$LOGDIR"
    printf 'setup\t%s\t0\n' "$T_SETUP" >"$LOGDIR/stages.tsv"
    {
        echo "recipes: $PG_RECIPES; preset $PG_PRESET; gpus $PG_GPUS; nproc $NPROC${1:+; $1}"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
        python -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
        lrzip -V 2>&1 | head -n 1
    } >"$LOGDIR/machine.txt" 2>&1
    cat "$LOGDIR/machine.txt"
}

# The tokenizer and tokenize rules: resources/data/<ds>/ from the carried corpus (deterministic, so every call
# makes the same shards).
tokenize_data() {
    stage_cmd tokenizer --set "params.config=$CFG/data.json" "${DOCS[@]}" &&
        run_stage tokenizer python "${STAGE_CMD[@]}" &&
        stage_cmd tokenize --set "params.config=$CFG/data.json" --set "threads=$NPROC" "${DOCS[@]}" &&
        run_stage tokenize python "${STAGE_CMD[@]}"
}

# build_artifact: the rules from audit_data to code (audit_data, train, hessians, quantize, pack, code) on the
# tokenized data, leaving model.pgrp, pack.json and train_gpt.py in $QUANT.
build_artifact() {
    stage_cmd audit_data --set "params.config=$CFG/audit.json" &&
    run_stage audit_data python "${STAGE_CMD[@]}" &&
    stage_cmd train --set "params.config=$CFG/train.json" &&
    run_stage train env OMP_NUM_THREADS="$OMP_PER_RANK" "${LAUNCH[@]}" "${STAGE_CMD[@]}" &&
    stage_cmd hessians --set "params.config=$CFG/hessians.json" &&
    run_stage hessians env OMP_NUM_THREADS="$OMP_PER_RANK" "${LAUNCH[@]}" "${STAGE_CMD[@]}" &&
    stage_cmd quantize --set "params.config=$CFG/quantize.json" &&
    run_stage quantize python "${STAGE_CMD[@]}" &&
    # lrzip bounds the pack: every core, no OMP cap (pgolf.pack starts one lrzip per group, each threaded)
    # --no-baseline: the brotli-only comparison is one core on the whole state for minutes, past this call's budget
    stage_cmd pack --set "params.compressor=$PG_COMPRESSOR" --set "params.prune_target=$PG_PRUNE_TARGET" &&
    run_stage pack env -u OMP_NUM_THREADS python "${STAGE_CMD[@]}" --no-baseline &&
    stage_cmd code --set "params.config=$CFG/code.json" &&
    run_stage code python "${STAGE_CMD[@]}"
}
