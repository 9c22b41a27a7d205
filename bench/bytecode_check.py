"""What this machine's Python does with torch's bytecode, which decides whether pgolf.launch keeps it in the compile
cache (pgolf.bytecode): the interpreter's flags and PYTHON* variables, and whether torch's installed bytecode exists,
is current and could be written.

    python bench/bytecode_check.py
"""

import importlib.util
import os
import sys
from pathlib import Path

from pgolf import bytecode


def main():
    torch = importlib.util.find_spec("torch").origin
    cached = importlib.util.cache_from_source(torch)
    print(f"sys.flags.dont_write_bytecode {sys.flags.dont_write_bytecode}, sys.pycache_prefix {sys.pycache_prefix}")
    print("environment", {k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
    print(f"{torch}: bytecode {'exists' if os.path.exists(cached) else 'missing'}, current {bytecode.current(torch)}")
    print(f"its folder writable {os.access(Path(torch).parent, os.W_OK)}")
    env = bytecode.child_env(Path("compile_cache"))
    print("pgolf.launch's ranks get PYTHONPYCACHEPREFIX", env.get("PYTHONPYCACHEPREFIX"))


if __name__ == "__main__":
    main()
