#!/usr/bin/env bash
# Device call: pgolf's training throughput and upstream #1855's script, one looping state, same call, same card,
# same shards; prints one table (bench/side_by_side.py). The two states need a call each (upstream compiles ~3
# minutes per state): run `preloop`, then `looped` back to back on the warm machine (the shards stay).
#   Here:  bash bench/prepare.sh && python bench/device_configs.py && cp -r ../shared/anchors/upstream-1855 bench/upstream
#   There: OUT=... bash bench/gpu_side_by_side.sh preloop|looped   (carry .whl .deb bench/data bench/upstream .device)
#   PGOLF_SBS_ATTENTION   pgolf backends to time, space-separated (default: auto)
#   PGOLF_SBS_KERNELS=1   first check and time every attention backend alone (bench/attention_backends.py)
#   PGOLF_SBS_FUSED=1     first check and time the fused CE and MLP kernels alone (bench/fused_kernels.py)
#   PGOLF_SBS_PROFILE=1   each program's CUDA kernels over one step (pgolf: --profile; upstream: bench/profile_script.py)
#   PGOLF_SBS_MODEL       JSON model overrides for a second pgolf run, e.g. '{"fused_ce": false, "fused_mlp": false}'
#   PGOLF_SBS_STEPS       pgolf's steady steps (default 10)
#   PGOLF_SBS_NO_PRECOMPILE=1  with fa4 first in PGOLF_SBS_ATTENTION: a second fa4 run that compiles its kernels on
#                         the first call (--no-fa4-precompile), for the compile seconds the background compile saves
#   PGOLF_SBS_PROFILE_RESTART=1  the first pgolf run's restart probe again under cProfile (--profile-restart)
#   PGOLF_SBS_UPSTREAM=0  skip upstream's run (its log from a call before on the same warm machine compares)
#   PGOLF_SBS_ATTENTION=  (empty) skip pgolf's runs
source "$(dirname "$0")/device_common.sh"

STATE=${1:?usage: gpu_side_by_side.sh preloop|looped}
case $STATE in
    preloop) PHASE=before_looping ;;
    looped) PHASE=looping ;;
    *) echo "state $STATE: use preloop or looped" >&2; exit 2 ;;
esac
[ -f bench/upstream/side_by_side.sh ] || { echo "bench/upstream/: missing; copy the upstream anchor there" >&2; exit 2; }
LOGDIR=logs/device/side_by_side_$STATE
rm -rf "$LOGDIR"
begin_stages "side by side, $STATE"
if [ ! -f "$P_MANIFEST" ]; then  # a warm machine keeps the shards of the previous call
    mkdir -p "$DATA"
    tokenize_data || exit 1
fi
if [ "${PGOLF_SBS_KERNELS:-0}" = 1 ]; then
    run_stage attention python bench/attention_backends.py --manifest "$P_MANIFEST" --out "$OUT/attention.json"
    tail -n 12 "$LOGDIR/attention.log"
fi
if [ "${PGOLF_SBS_FUSED:-0}" = 1 ]; then
    run_stage fused python bench/fused_kernels.py --out "$OUT/fused.json"
    tail -n 5 "$LOGDIR/fused.log"
fi
PROFILE=()
[ "${PGOLF_SBS_PROFILE:-0}" = 1 ] && PROFILE=(--profile)
files=()
# pgolf_run NAME ARGS...: one throughput run, its JSON kept for the table
pgolf_run() {
    local name=$1 started=$EPOCHREALTIME
    shift
    rm -rf "$P_COMPILE_CACHE"
    run_stage "pgolf-$name" python bench/train_throughput.py --manifest "$P_MANIFEST" --cache "$P_COMPILE_CACHE" \
        --states "$PHASE" --steps "${PGOLF_SBS_STEPS:-10}" --out "$OUT/throughput-$name.json" "${PROFILE[@]}" "$@"
    [ -f "$OUT/throughput-$name.json" ] && files+=("$OUT/throughput-$name.json")
    # when flash-attn-4's kernels were written, against the run's start: the background compile's or the first call's
    { echo "$started run started"; find "$P_COMPILE_CACHE" -path '*flash_attn_cute*' -name '*.o' -printf '%T@ %s %p\n'; } \
        >"$OUT/fa4-cache-$name.txt" 2>/dev/null
}
BACKENDS=${PGOLF_SBS_ATTENTION-auto}
for att in $BACKENDS; do
    extra=()
    [ "$att" != "${BACKENDS%% *}" ] && extra=(--no-eager-check --no-restart)  # once is enough
    [ "$att" = "${BACKENDS%% *}" ] && [ "${PGOLF_SBS_PROFILE_RESTART:-0}" = 1 ] && extra=(--profile-restart)
    pgolf_run "$att" --attention "$att" "${extra[@]}"
done
[ -n "${PGOLF_SBS_MODEL:-}" ] && pgolf_run variant --model "$PGOLF_SBS_MODEL" --no-eager-check --no-restart
[ "${PGOLF_SBS_NO_PRECOMPILE:-0}" = 1 ] && [ "${BACKENDS%% *}" = fa4 ] &&
    pgolf_run fa4-no-precompile --attention fa4 --no-fa4-precompile --no-eager-check --no-restart
UP_LAUNCH=()
[ "${PGOLF_SBS_PROFILE:-0}" = 1 ] && UP_LAUNCH=(LAUNCH="../profile_script.py train_gpt.py")
[ "${PGOLF_SBS_UPSTREAM:-1}" = 1 ] &&
    run_stage upstream env UP="$STATE" "${UP_LAUNCH[@]}" bash bench/upstream/side_by_side.sh
grep -h PROFILE "$OUT/upstream-$STATE.log" >"$OUT/upstream-profile.txt" 2>/dev/null
cp "$LOGDIR/stages.tsv" "$OUT/"
[ ${#files[@]} -gt 0 ] && [ -f "$OUT/upstream-$STATE.log" ] &&
    python bench/side_by_side.py --state "$PHASE" "${files[@]}" "$OUT/upstream-$STATE.log" | tee "$OUT/table.md"
