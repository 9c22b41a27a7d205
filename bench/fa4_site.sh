# There (sourced by bench/device_common.sh, never run): flash-attn-4 into .fa4site/ from the two parts
# bench/fa4_carry.sh made here. A call carrying .fa4a/ keeps its part in /tmp, which a warm machine keeps for the next
# call (the checkout's ignored .fa4site/ did not survive there); the call carrying .fa4b/ joins the parts, installs
# the wheels and puts flash-attn-4 on PYTHONPATH. The cutlass package finds its modules through a .pth file, which
# PYTHONPATH does not read, hence its dsl_packages folder on the path too.
FA4_SITE=$PWD/.fa4site
mkdir -p "$FA4_SITE"
[ -f .fa4a/ir.xz.part1 ] && cp .fa4a/ir.xz.part1 /tmp/fa4-ir.xz.part1
if [ -f .fa4b/ir.xz.part2 ] && [ ! -f "$FA4_SITE/installed" ]; then
    part1=
    for f in .fa4a/ir.xz.part1 /tmp/fa4-ir.xz.part1; do
        [ -f "$f" ] && { part1=$f; break; }
    done
    if [ -z "$part1" ]; then
        echo "flash-attn-4: the first part (.fa4a/) is not on this machine; carry .fa4a in the call before, back to back" >&2
    else
        echo "flash-attn-4: first part from $part1" >&2
        # into a folder of its own, then merged: pip --target skips a package folder that is already there
        rm -rf /tmp/fa4-wheels && mkdir -p "$FA4_SITE/$(dirname "$(cat .fa4b/ir.path)")" &&
            cat "$part1" .fa4b/ir.xz.part2 | xz -dc >"$FA4_SITE/$(cat .fa4b/ir.path)" &&
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fa4-wheels \
                .fa4b/wheels/*.whl &&
            cp -a /tmp/fa4-wheels/. "$FA4_SITE"/ && tar -C "$FA4_SITE" -xJf .fa4b/cu13_rest.tar.xz &&
            touch "$FA4_SITE/installed"
    fi
fi
if [ -f "$FA4_SITE/installed" ]; then
    # its JIT cache goes beside Inductor's (pgolf.fa4), so a run on an emptied compile cache compiles it cold
    export PYTHONPATH=$FA4_SITE:$FA4_SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
fi
