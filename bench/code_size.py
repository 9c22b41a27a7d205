"""Bytes of train_gpt.py per encoding: minifier settings x module set x compressor x wrapper, for one preset.

    python bench/code_size.py [--config config.yaml] [--recipe recipes/X.yaml] [--preset record]

Every row is the size of a complete script (header line, stub, compressed payload) that pgolf.codepack could write;
the last row is what it writes (checked against build_script). The payload is the bootstrap, the narrowed config
(its dataclass sections less their defaults, `pgolf.scriptconfig.sparse_config`) and the modules, NUL-separated
(`pgolf.codepack.payload`). Wrappers: base85 in a str literal (upstream's: `exec(B.decompress(b.b85decode("...")))`)
or the compressed bytes XORed with `pgolf.codepack.escape_key` in a latin-1 str literal
(`pgolf.codepack.blob_expression`). Compressors at their maximum settings: zlib 9, bz2 9, xz preset 9e, raw LZMA2
9e (lc/pb tuned), brotli q11 (lgwin 24), lrzip ZPAQ -L 9.
"""

import argparse
import base64
import bz2
import lzma
import sys
import time
import zlib
from pathlib import Path

import brotli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgolf import codepack as C  # noqa: E402
from pgolf.config import resolve  # noqa: E402

UPSTREAM = dict(
    rename_locals=False,
    hoist_literals=False,
    remove_literal_statements=True,
    remove_asserts=True,
    prefer_single_line=True,
)
ALL_MODULES = "every module but report.py (before issue 25)"
CONFIG_AWARE = "closure less the OPTIONAL modules the config turns off (what codepack writes)"


def raw_lzma2(data: bytes) -> bytes:
    best = None
    for lc in range(5):
        for pb in range(3):
            filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": lc, "pb": pb}]
            out = lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
            best = out if best is None or len(out) < len(best) else best
    return best


COMPRESSORS = {
    "zlib 9": lambda d: zlib.compress(d, 9),
    "bz2 9": lambda d: bz2.compress(d, 9),
    "xz 9e": lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME),
    "raw LZMA2 9e": raw_lzma2,
    "brotli q11": lambda d: brotli.compress(d, quality=11, lgwin=24),
    "lrzip ZPAQ -L 9": C.lrzip_compress,
}
STUB_CALL = {  # the decompressing expression each compressor needs in the stub, around the bytes expression X
    "zlib 9": "import zlib;t=zlib.decompress(X)",
    "bz2 9": "import bz2;t=bz2.decompress(X)",
    "xz 9e": "import lzma;t=lzma.decompress(X)",
    "raw LZMA2 9e": "import lzma as L;t=L.decompress(X,L.FORMAT_RAW,None,[{'id':L.FILTER_LZMA2,'lc':0,'pb':0}])",
    "brotli q11": "import brotli;t=brotli.decompress(X)",
    "lrzip ZPAQ -L 9": "import subprocess as s;t=s.run(('lrzip','-dq'),input=X,capture_output=1,check=1).stdout",
}
HEADER = "# pgolf record: minified by Python 3.x.y with python-minifier 3.x.y; coding: latin-1\n"
TAIL = ".decode().split('\\0');exec(t[0])\n"


def script_bytes(blob: bytes, compressor: str, wrapper: str) -> int:
    if wrapper == "base85":
        x = f'__import__("base64").b85decode("{base64.b85encode(blob).decode()}")'
    else:
        x = C.blob_expression(blob)
    stub = STUB_CALL[compressor].replace("X", x)
    return len((HEADER + stub + TAIL).encode("latin-1"))


def minified(rels, options: dict) -> dict:
    """{module: (path, python-minifier output)}: the plain minifier, none of codepack's own passes."""
    root = C.PACKAGE_DIR.parent
    return {C.module_name(rel): (rel, C.python_minifier.minify((root / rel).read_text(), **options)) for rel in rels}


def main():
    parser = argparse.ArgumentParser(description="Bytes of train_gpt.py per encoding.")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--recipe", action="append", default=[])
    parser.add_argument("--preset", default="record")
    args = parser.parse_args()
    config = C.narrow_config(resolve([args.config, *args.recipe]), args.preset)
    settings = [  # (label, module set, minify options)
        ("upstream pyminify options", ALL_MODULES, UPSTREAM),
        ("upstream pyminify options", "closure of run_all", UPSTREAM),
        (
            "codepack (help/__main__/unused defs dropped, locals + private globals renamed)",
            "closure of run_all",
            C.MINIFY_OPTIONS,
        ),
        (
            "codepack (help/__main__/unused defs dropped, locals + private globals renamed)",
            CONFIG_AWARE,
            C.MINIFY_OPTIONS,
        ),
    ]
    print(f"preset {args.preset}; Python {sys.version.split()[0]}\n")
    print("| minifier | modules | payload | compressor | compressed | base85 script | latin-1 script |")
    print("|---|---|---|---|---|---|---|")
    closure = [p.relative_to(C.PACKAGE_DIR.parent).as_posix() for p in C.submitted_files()]
    every = [
        p.relative_to(C.PACKAGE_DIR.parent).as_posix()
        for p in sorted(C.PACKAGE_DIR.rglob("*.py"))
        if "__pycache__" not in p.parts and p.name != "report.py"
    ]
    for label, module_set, options in settings:
        if options is C.MINIFY_OPTIONS:
            modules = C.package_modules(config=config if module_set == CONFIG_AWARE else None)
        else:
            modules = minified(every if module_set == ALL_MODULES else closure, options)
        data = C.payload(config, modules)
        for name, compress in COMPRESSORS.items():
            start = time.perf_counter()
            blob = compress(data)
            seconds = time.perf_counter() - start
            print(
                f"| {label} | {module_set} | {len(data):,} | {name} ({seconds:.1f} s) | {len(blob):,} | "
                f"{script_bytes(blob, name, 'base85'):,} | {script_bytes(blob, name, 'latin-1'):,} |"
            )
    written = len(C.build_script(config, args.preset))
    blob = C.lrzip_compress(C.payload(config, C.package_modules(config=config)))
    assert abs(written - script_bytes(blob, "lrzip ZPAQ -L 9", "latin-1")) < 40, "stub drifted from codepack"
    print(f"\npgolf.codepack.build_script writes {written:,} bytes (this Python's versions in its header).")


if __name__ == "__main__":
    main()
