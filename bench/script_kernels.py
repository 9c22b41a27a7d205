"""The fused kernels as a submission's train_gpt.py carries them (minified by pgolf.codepack) on the GPU: the script's
modules stand in for the package, then bench/fused_kernels.py checks them against float64 and times them.

    python bench/script_kernels.py --write DIR [--config config.yaml] [--preset record]    (here: DIR/train_gpt.py
                                                                  and DIR/renames.json, the script's shared names)
    python bench/script_kernels.py --script DIR/train_gpt.py --renames DIR/renames.json [--rows N] [--out F]  (GPU)

The script's Triton kernels must keep their `tl.constexpr` parameters through the minifier, or they do not compile.
Only the MLP layout the script runs is checked (kernels.MLP_PERSISTENT is a private global there, renamed).
"""

import argparse
import json
import runpy
from pathlib import Path


def write(out: Path, config_path: str, preset: str):
    """The preset's train_gpt.py and its shared names' short spellings, into `out`."""
    from pgolf import codepack
    from pgolf.config import narrow_config, resolve

    config = narrow_config(resolve([config_path]), preset)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_gpt.py").write_bytes(codepack.build_script(config, preset))
    (out / "renames.json").write_text(json.dumps(codepack.package_renames(config=config)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="write the script and its renames here, then stop")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--preset", default="record")
    parser.add_argument("--script", type=Path)
    parser.add_argument("--renames", type=Path)
    args, rest = parser.parse_known_args()
    if args.write:
        return write(args.write, args.config, args.preset)
    runpy.run_path(str(args.script), run_name="script_modules")  # the stub and the bootstrap, not run_all
    import pgolf.kernels as kernels

    if type(kernels.__loader__).__name__ != "_PgolfModules":
        raise SystemExit(f"pgolf.kernels came from {kernels.__file__}, not from {args.script}")
    for name, short in json.loads(args.renames.read_text()).items():
        if hasattr(kernels, short):
            setattr(kernels, name, getattr(kernels, short))
    import fused_kernels  # bench/, on the path of a script run from it; imports pgolf.kernels: the script's

    every_case = fused_kernels.cases
    fused_kernels.cases = lambda rows, device: {
        name: case for name, case in every_case(rows, device).items() if name != fused_kernels.PER_TILE
    }
    fused_kernels.main(rest)


if __name__ == "__main__":
    main()
