#!/usr/bin/env bash
# Pack and unpack seconds of a record-size .pgrp on this machine's CPUs, lrzip_groups (#1855's one lrzip stream per
# group) against lrzip_parts (groups over 3 MiB cut into parallel streams), each with its `lrzip -d` floor:
#   OUT=/some/folder bash bench/gpu_pack_speed.sh [bench/unpack.py options]
# Needs only the repository, python with torch and numpy, and lrzip: on PATH or as .deb/*.deb (extracted here);
# brotli from .whl/*.whl when python lacks it. Prints bench/unpack.py's table; a copy goes to $OUT/pack_speed.md.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT=${OUT:-/tmp}
mkdir -p "$OUT"
PY=$(command -v python3 || command -v python)
if ! "$PY" -c 'import brotli' 2>/dev/null; then
    compgen -G ".whl/*.whl" >/dev/null || { echo "brotli missing and no .whl/*.whl carried" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! command -v lrzip >/dev/null 2>&1; then
    compgen -G ".deb/*.deb" >/dev/null || { echo "lrzip missing and no .deb/*.deb carried" >&2; exit 2; }
    for f in .deb/*.deb; do dpkg -x "$f" /tmp/lrz || exit 2; done
    export PATH=/tmp/lrz/usr/bin:$PATH
    export LD_LIBRARY_PATH=/tmp/lrz/lib/x86_64-linux-gnu:/tmp/lrz/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
{ nproc; lrzip -V 2>&1 | head -n 1; "$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'; } |
    paste -sd' ' | sed 's/^/cores, lrzip, python, torch: /'
"$PY" bench/unpack.py "$@" | tee "$OUT/pack_speed.md"
