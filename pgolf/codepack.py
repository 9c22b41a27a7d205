"""The single-file submission script: the modules a judge's run executes, minified and compressed, and the config.

    python -m pgolf.codepack --config resolved.json --preset record \
        --out results/<name>/seed<seed>/quant/record/train_gpt.py

The challenge counts the bytes of train_gpt.py and runs it with `torchrun --standalone --nproc_per_node=8
train_gpt.py`. The script carries the import closure of pgolf.runall and pgolf.scriptconfig (pgolf.stages.closure,
from the import statements, without importing), so the DAG-only stages (data, tokenizer, launch, report, config
resolution, the submission folder) stay out, less the modules of OPTIONAL whose options the config turns off and
those only pgolf run from its files executes (OUTSIDE_SCRIPT; their callers import them inside the branch that runs
them). Each module loses its argparse help texts, its `__main__` block, the DAG advice of its error messages, its
config dataclasses' `check` methods (build_script runs them on the config first), the top-level definitions (and
call-free assignments) nothing carried names, the entries of its subscript-only tables whose keys nothing carried
spells (STAGES, PATHS) and the imports nothing left reads; the top-level names the modules share (imported by name,
read as a module attribute) get short names, consistently in every module (rename_shared), so do the identifiers
functions bind, one name for each in every function (rename_locals), and python-minifier then renames the
module-level names no other module reads (bench/code_size.py and bench/RESULTS.md measure these choices). The
bootstrap, the config (its dataclass sections less their defaults: pgolf.scriptconfig) and the modules,
NUL-separated, are compressed by lrzip's ZPAQ (the binary that unpacks the model anyway), XORed with the byte that
leaves the fewest escapes (escape_key) and stored as a latin-1 string literal, one byte per byte, under a
three-line stub. The bootstrap installs a meta-path importer that serves the pgolf.* modules from memory (and
nothing else), then, run as a script, calls pgolf.runall.run_all(pgolf.scriptconfig.full_config(CONFIG)). python-minifier is needed only here, at build time.
"""

import argparse
import ast
import builtins
import json
import keyword
import platform
import shutil
import string
import subprocess
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import Path

import python_minifier

from .codeheader import LINE
from .config import narrow_config
from .errors import PgolfError
from .io import write_bytes
from .scriptconfig import sections, sparse_config
from .stageconfig import load_stage_config
from .stages import closure

PACKAGE_DIR = Path(__file__).resolve().parent
# What the bootstrap calls, {module: function}: pgolf.runall.run_all(pgolf.scriptconfig.full_config(CONFIG)); the
# import closure of these modules is what train_gpt.py carries
ENTRIES = {"runall": "run_all", "scriptconfig": "full_config"}
# Upstream's `pyminify --no-hoist-literals --remove-literal-statements --remove-asserts --prefer-single-line`, but
# renaming the module-level names that no other module imports or reads as an attribute (see preserved_globals;
# rename_shared shortens those others before, rename_locals the locals); with the passes of _DropUnrun, 2.4 KB less
# after compression (bench/RESULTS.md). Other options keep python-minifier's defaults.
MINIFY_OPTIONS = dict(
    rename_locals=False,  # rename_locals (below) does it, one name for an identifier in every function
    rename_globals=True,
    hoist_literals=False,
    remove_literal_statements=True,
    remove_asserts=True,
    prefer_single_line=True,
    # _DropUnrun drops the parameters' and variables' annotations but a Triton kernel's: `tl.constexpr` makes a
    # parameter or a local a compile-time constant (tl.arange and tl.reshape need one), which Triton reads from them
    remove_annotations=python_minifier.RemoveAnnotationsOptions(
        remove_argument_annotations=False, remove_variable_annotations=False
    ),
)
CHECK_METHOD = "check"  # config dataclasses' value checks, run at build time (check_config), not in the script
LRZIP_ARGS = ("-z", "-L", "9")  # ZPAQ at its highest level, as pack.py compresses the weights

BOOTSTRAP = """\
import sys,json,importlib.abc,importlib.util
CONFIG=json.loads(t[1])
M={r[:-3].replace('/','.').removesuffix('.__init__'):(r,c)for r,c in zip(t[2::2],t[3::2])}
class _PgolfModules(importlib.abc.MetaPathFinder,importlib.abc.Loader):
 modules=M
 def find_spec(self,name,path=None,target=None):
  if name in M:
   rel=M[name][0];package=[] if rel.endswith('__init__.py') else None
   return importlib.util.spec_from_file_location(name,'<train_gpt.py>/'+rel,loader=self,
    submodule_search_locations=package)
 def create_module(self,spec):return None
 def exec_module(self,module):exec(compile(M[module.__name__][1],module.__file__,'exec'),module.__dict__)
 def get_source(self,name):return M[name][1]
sys.meta_path.insert(0,_PgolfModules())
if __name__=='__main__':
 import pgolf.runall,pgolf.scriptconfig as c;pgolf.runall.run_all(c.full_config(CONFIG))
"""
STUB = (
    "import subprocess as s\n"
    "t=s.run(('lrzip','-dq'),input={blob},capture_output=1,check=1)"
    ".stdout.decode().split('\\0');exec(t[0])\n"
)


# --- which modules --------------------------------------------------------------------------------------------


def module_name(relpath: str) -> str:
    parts = relpath.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def one_of(*values):
    """The option runs where its key holds one of `values`."""
    return lambda value: value in values


def none_of(*values):
    """The option runs where its key holds anything but `values` (its off values)."""
    return lambda value: value not in values


# Modules of the closure that only some options run: {path: ((config key, runs(value)), ...)}, carried where any of
# its options runs. Each caller imports its module inside the branch the option takes, so a script whose config
# turns them all off leaves the module out (tests/test_codepack.py imports every carried module with the others
# blocked). A key the config lacks keeps it; {preset} stands for the preset the script submits
# (quant.submission_preset, which narrow_config sets).
OPTIONAL = {
    "pgolf/sgd_ttt.py": (("eval.ttt.mode", one_of("sgd")),),  # #1572's full-weight SGD TTT (pgolf.evaluate)
    "pgolf/ngram.py": (("eval.tilt.enabled", one_of(True)),),  # the n-gram tilt (pgolf.evaluate, pgolf.ttt)
    "pgolf/pack_shuffle.py": (("pack.compressor", one_of("brotli_shuffle")),),  # #1572's artifact (pgolf.pack)
    "pgolf/prune.py": (("pack.compressor", one_of("lzma_pruned")),),  # #1512's pruned lzma format (pgolf.pack)
    "pgolf/lrzip_parts.py": (("pack.compressor", one_of("lrzip_parts")),),  # groups in parallel streams (pgolf.pack)
    "pgolf/quant/awq.py": (("quant.presets.{preset}.awq.enabled", one_of(True)),),  # AWQ-lite (pgolf.quant.state)
    "pgolf/quant/percentile_clip.py": (("quant.presets.{preset}.gptq.clip_percentiles", none_of(None, [])),),  # #1512
    "pgolf/quant/lqer_adaptive.py": (("quant.presets.{preset}.lqer.adaptive", one_of(True)),),  # #1935 (quant.state)
    "pgolf/quant/int8_clip.py": (  # #1512's int8 rows (pgolf.quant.state): #1019's tables, or tok_emb by the preset
        ("model.bigram_buckets", none_of(0)),
        ("model.value_embed_layers", none_of(None, [])),
        ("quant.presets.{preset}.embed_plain_int8", one_of(True)),
    ),
    "pgolf/window_loader.py": (("train.loader", one_of("shuffled")),),  # #1572's shuffled windows (pgolf.train)
    "pgolf/seq_schedule.py": (("model.seq_schedule", none_of(None, [])),),  # progressive context (pgolf.train)
    "pgolf/embeds.py": (  # #1019's token-side modules (pgolf.model)
        ("model.bigram_buckets", none_of(0)),
        ("model.value_embed_layers", none_of(None, [])),
        ("model.smear_per_dim", one_of(True)),
    ),
    "pgolf/pko.py": (("model.partial_key_offset", one_of(True)),),  # #1512's partial key offset (pgolf.model)
    "pgolf/qat.py": (("train.late_qat_threshold", none_of(0)),),  # #1512's late QAT (pgolf.model, pgolf.embeds)
    "pgolf/selfcalib.py": (("hessians.source", one_of("self")),),  # #1512's calibration (pgolf.hessians)
    "pgolf/fa4.py": (("model.attention", one_of("fa4")),),  # FlashAttention-4's kernels (pgolf.attention)
    "pgolf/asym_softcap.py": (("model.asym_logit_rescale", one_of(True)),),  # #1923's learned caps (pgolf.model)
    "pgolf/cross_document.py": (("model.cross_document", one_of(True)),),  # #1493/#1572's attention (pgolf.model)
    "pgolf/sliding_window.py": (("model.attn_window", none_of(None)),),  # #1512's window keys' check (pgolf.model)
    "pgolf/rope_scaling.py": (("model.rope_train_len", none_of(None)),),  # #1019's longer-sequence RoPE (pgolf.model)
    "pgolf/cudnn_attention.py": (("model.attention", one_of("cudnn")),),  # never "auto"'s pick (pgolf.attention)
    "pgolf/checkpoint.py": (("train.checkpoint_minutes", none_of(0)),),  # checkpoints and resume (pgolf.train)
    "pgolf/piece_bytes.py": (("data.hf.caseops", one_of(False)),),  # bpb without the byte sidecar (pgolf.bpb)
}
# Modules of the closure that only pgolf run from its files executes, never the script: their callers import them in
# the branch that runs there (pgolf.runlog.code_version: the script's modules have no files and no git; pgolf.pack's
# brotli-only baseline, which run_all does not ask for).
OUTSIDE_SCRIPT = ("pgolf/package_version.py", "pgolf/pack_baseline.py")
_MISSING = object()


def _lookup(config: dict, key: str):
    value, preset = config, (config.get("quant") or {}).get("submission_preset")
    for part in key.replace("{preset}", str(preset)).split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
    return value


def needed(rel: str, config: dict) -> bool:
    """Whether a script for `config` must carry the module at `rel` (every module outside OPTIONAL and
    OUTSIDE_SCRIPT must)."""
    if rel in OUTSIDE_SCRIPT:
        return False
    if rel not in OPTIONAL:
        return True
    for key, runs in OPTIONAL[rel]:
        value = _lookup(config, key)
        if value is _MISSING or runs(value):
            return True
    return False


def submitted_files(package_dir=PACKAGE_DIR, config: dict | None = None) -> list[Path]:
    """The source files train_gpt.py carries: the import closure of ENTRIES' modules (pgolf.stages.closure), less
    OUTSIDE_SCRIPT and the modules of OPTIONAL that `config` does not run (None: all of OPTIONAL's)."""
    package_dir = Path(package_dir)
    for entry in ENTRIES:
        if not (package_dir / f"{entry}.py").is_file():
            raise PgolfError(f"{package_dir}: no {entry}.py; the submission's entry point must exist")
    rels = closure(list(ENTRIES), package_dir)
    return [package_dir.parent / rel for rel in rels if needed(rel, config or {})]


# --- minification ---------------------------------------------------------------------------------------------


class _PlainAssignments(ast.NodeTransformer):
    """`x: T = v` as `x = v` (a bare `x: T`, as pass) outside class bodies, where a dataclass reads its fields'
    annotations, and outside nested functions (their own visit decides: a Triton kernel's `n: tl.constexpr = ...` is
    a compile-time constant, so python-minifier keeps variable annotations and this pass drops the others)."""

    def visit_AnnAssign(self, node):
        if node.value is None:
            return ast.Pass()
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef


class _DropUnrun(ast.NodeTransformer):
    """Remove what a judge's run never executes or cannot use: argparse help texts, descriptions and program names,
    `if __name__ == "__main__"`, the DAG advice in error messages (_cut_advice), the top-level definitions named in
    `unused` and the table entries in `entries`, then the top-level imports nothing left reads (`outside`: the names
    other modules may reach, as an attribute or by a pgolf import)."""

    def __init__(self, unused=(), outside=None, entries=None):
        self.unused, self.outside, self.entries = set(unused), outside, entries or {}

    def visit_Module(self, node):
        node.body = _PlainAssignments().visit(node).body
        node.body = [n for n in node.body if _defined_name(n) not in self.unused]
        for n in node.body:  # unused also names the pgolf imports nothing reads (unused_definitions)
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                n.names = [a for a in n.names if _bound(a) not in self.unused]
        node.body = [n for n in node.body if not isinstance(n, (ast.Import, ast.ImportFrom)) or n.names]
        for n in node.body:
            keys = self.entries.get(_assigned_name(n), ())
            if keys:
                kept = [(k, v) for k, v in zip(n.value.keys, n.value.values) if k.value not in keys]
                n.value.keys, n.value.values = [k for k, _ in kept], [v for _, v in kept]
        self.generic_visit(node)
        if self.outside is None:
            return node
        read = {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)} | self.outside
        for n in node.body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                n.names = [a for a in n.names if (a.asname or a.name).split(".")[0] in read or a.name == "*"]
        node.body = [n for n in node.body if not isinstance(n, (ast.Import, ast.ImportFrom)) or n.names]
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if func in ("ArgumentParser", "add_argument", "add_parser", "add_argument_group"):  # usage names the script
            node.keywords = [k for k in node.keywords if k.arg not in ("help", "description", "prog")]
        if func and func.endswith("Error") and node.args:
            _cut_advice(node.args[0])
        return node

    def visit_If(self, node):
        return None if _is_main_block(node) else self.generic_visit(node)

    def visit_FunctionDef(self, node):
        if not any(_decorator_name(d) == "jit" for d in node.decorator_list):  # a Triton kernel keeps them
            for arg in _all_args(node):
                arg.annotation = None
            node.body = _PlainAssignments().visit(ast.Module(node.body, [])).body
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        # a config dataclass's `check`: build_script ran it on the script's config (check_config)
        node.body = [n for n in node.body if not (isinstance(n, ast.FunctionDef) and n.name == CHECK_METHOD)]
        self.generic_visit(node)
        node.body = [n for n in node.body if not _is_empty_post_init(n)]
        return node

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == CHECK_METHOD:
            return None  # self.check() or super().check()
        return self.generic_visit(node)


def _is_empty_post_init(node) -> bool:
    """A `__post_init__` that calls only `check`, left without a body (a dataclass without one does the same)."""
    return isinstance(node, ast.FunctionDef) and node.name == "__post_init__" and not node.body


def _cut_advice(message):
    """An error's message keeps what went wrong, up to its first "; ": the advice after it names a DAG step (a rule to
    re-run, the config to fix, a snakemake target), which a judge's run of train_gpt.py cannot take. Advice to
    install something stays (the judge's machine can)."""
    parts = message.values if isinstance(message, ast.JoinedStr) else [message]
    if "install" in ast.unparse(message):
        return
    for i, part in enumerate(parts):
        if isinstance(part, ast.Constant) and isinstance(part.value, str) and "; " in part.value:
            part.value = part.value.split("; ")[0]
            if isinstance(message, ast.JoinedStr):
                message.values = parts[: i + 1]
            return


def _is_main_block(node) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _assigned_name(node) -> str | None:
    """NAME of a top-level `NAME = value`."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _defined_name(node) -> str | None:
    """The one name a top-level statement defines when running it does nothing else: a function, a class, a table
    (_is_table) or `NAME = value` where the value calls nothing (constants, literals, operations on other names)."""
    if isinstance(node, DEFINITIONS):
        return node.name
    name = _assigned_name(node)
    if name and (_is_table(node.value) or not any(isinstance(sub, ast.Call) for sub in ast.walk(node.value))):
        return name
    return None


def _is_table(value) -> bool:
    """A dict display with string keys, such as STAGES: nothing in pgolf builds one whose values do more than build
    values (STAGES' Stage(...) entries)."""
    return isinstance(value, ast.Dict) and all(
        isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys
    )


def _referenced_names(node, foreign=frozenset()) -> tuple[set, set]:
    """The names a piece of code could reach a definition by (an assignment's own target aside): (plain names, which
    reach its own module's; attributes and imported names, which reach any module's). An attribute read on a module
    from outside pgolf (`foreign`: sys.argv) names no pgolf definition."""
    own, shared = set(), set()
    for sub in ast.walk(node.value if isinstance(node, ast.Assign) and _defined_name(node) else node):
        if isinstance(sub, ast.Name):
            own.add(sub.id)
        elif isinstance(sub, ast.Attribute) and _root(sub.value) not in foreign:
            shared.add(sub.attr)
        elif isinstance(sub, (ast.ImportFrom, ast.Import)):
            shared.update(alias.name for alias in sub.names)
    return own, shared


def _bound(alias) -> str:
    """The name an import binds: `import a.b` binds a, `from x import y as z` z."""
    return alias.asname or alias.name.split(".")[0]


def _from_pgolf(node, alias) -> bool:
    """Whether an import's name comes from pgolf (relative, or absolute from pgolf)."""
    module = alias.name if isinstance(node, ast.Import) else node.module or ""
    return bool(getattr(node, "level", 0)) or module.split(".")[0] == "pgolf"


def _foreign_names(tree) -> set:
    """The names a module binds only by a top-level import from outside pgolf (sys, np, Path): what is read as their
    attribute is no pgolf definition."""
    imported, bound = set(), set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {_bound(a) for a in node.names if a.name.split(".")[0] != "pgolf"}
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] != "pgolf":
            imported |= {_bound(a) for a in node.names}
        else:
            bound |= _bound_in(node) | {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)}
    return imported - bound


def _read_imports(imports: dict, own: dict, shared: Counter) -> tuple[dict, Counter]:
    """({path: the top-level import aliases whose bound name something reads}, `shared` plus the names they import):
    an import names what it imports while its bound name is read, in its module or from another (by an attribute or
    an import of it: pgolf.quant re-exports), so repeated until no import is added."""
    imported = Counter()
    while True:
        reach = shared + imported
        read = {rel: [a for _, a in pairs if own[rel][_bound(a)] or reach[_bound(a)]] for rel, pairs in imports.items()}
        more = Counter(a.name for aliases in read.values() for a in aliases)
        if more == imported:
            return read, reach
        imported = more


def unused_definitions(sources: dict) -> dict:
    """{path: top-level definitions (_defined_name) nothing in the carried sources names outside what _DropUnrun
    takes out of them (`__main__` blocks, config checks, the DAG advice of error messages) and their own bodies (a
    recursive function nothing else calls), and the names its pgolf imports bind that nothing reads (so no import
    outlives what it takes)}, repeated until none is left (a definition only a removed one used goes too). A plain
    name names a definition of its own module, an attribute or an imported name one of any module; a top-level import
    names what it imports only while something left reads the name it binds. Nothing in pgolf reaches a module-level
    name by a string or a star import."""
    trees = {rel: _unrun_dropped(source, rel) for rel, source in sources.items()}
    foreign = {rel: _foreign_names(tree) for rel, tree in trees.items()}
    refs = {id(n): _referenced_names(n, foreign[rel]) for rel, tree in trees.items() for n in tree.body}
    unused = {rel: set() for rel in trees}
    while True:
        kept = {rel: [n for n in tree.body if _defined_name(n) not in unused[rel]] for rel, tree in trees.items()}
        # how many statements name each: a definition that only names itself (compile_cache.add_argument calls
        # parser.add_argument) is named by none other
        shared = Counter(ENTRIES.values())
        own = {rel: Counter() for rel in trees}
        for rel, nodes in kept.items():
            for node in nodes:
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    own[rel].update(refs[id(node)][0])
                    shared.update(refs[id(node)][1])
        imports = {
            rel: [(n, a) for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
            for rel, nodes in kept.items()
        }
        read, shared = _read_imports(imports, own, shared)
        found = {}
        for rel, nodes in kept.items():
            found[rel] = set()
            for node in nodes:
                name = _defined_name(node)
                if name is None:
                    continue
                own_refs, shared_refs = refs[id(node)]
                if own[rel][name] - (name in own_refs) <= 0 and shared[name] - (name in shared_refs) <= 0:
                    found[rel].add(name)
        if not any(found.values()):
            unread = {
                rel: {_bound(a) for n, a in pairs if _from_pgolf(n, a) and a not in read[rel]}
                for rel, pairs in imports.items()
            }
            return {rel: unused[rel] | unread[rel] for rel in trees}
        for rel in trees:
            unused[rel] |= found[rel]


def preserved_globals(sources: dict) -> list[str]:
    """Names another module may reach: anything imported by name or read as an attribute anywhere in the sources,
    plus the functions the bootstrap calls (ENTRIES). Every other module-level name is private to its module, so
    renaming it changes nothing."""
    names = set(ENTRIES.values())
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.ImportFrom, ast.Import)):
                names.update(alias.name for alias in node.names)
    return sorted(names)


def unread_entries(sources: dict, unused: dict) -> dict:
    """{path: {NAME: keys}}: for each top-level `NAME = {"key": value, ...}` (string keys) that the code left in the
    script reads only as NAME[...] in its own module, the entries whose key no other string of that code spells (a
    key the judge's run looks up is written out: the stages run_all runs, the paths they name). Repeated until none is
    left (a key only a dropped entry, or its own entry, spelled goes too). Nothing in pgolf builds such a key from pieces, and such a
    table's values only build values (STAGES' Stage(...) entries)."""
    trees = {}
    for rel, source in sources.items():
        tree = ast.parse(source)
        tree.body = [n for n in tree.body if not _is_main_block(n) and _defined_name(n) not in unused[rel]]
        trees[rel] = tree
    outside = reached_from_outside({rel: ast.unparse(tree) for rel, tree in trees.items()})
    tables = {}  # (path, NAME) -> its ast.Dict
    for rel, tree in trees.items():
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in tree.body:
            name = _assigned_name(node)
            if name is None or name in outside or not isinstance(node.value, ast.Dict):
                continue
            if not all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.value.keys):
                continue
            reads = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name and n is not node.targets[0]]
            if all(isinstance(parents[n], ast.Subscript) and parents[n].value is n for n in reads):
                tables[rel, name] = node.value
    dropped = {key: set() for key in tables}
    while True:
        skip = {id(k) for table in tables.values() for k in table.keys}
        for key, table in tables.items():  # the dropped entries' strings do not count
            skip |= {id(n) for k, v in zip(table.keys, table.values) if k.value in dropped[key] for n in ast.walk(v)}
        spelled = Counter(n.value for tree in trees.values() for n in _strings(tree) if id(n) not in skip)
        more = {
            key: {
                k.value
                for k, v in zip(table.keys, table.values)
                if k.value not in dropped[key] and spelled[k.value] <= sum(n.value == k.value for n in _strings(v))
            }
            for key, table in tables.items()
        }
        if not any(more.values()):
            break
        for key in tables:
            dropped[key] |= more[key]
    out = {rel: {} for rel in trees}
    for (rel, name), keys in dropped.items():
        if keys:
            out[rel][name] = keys
    return out


def _strings(node):
    return (n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def reached_from_outside(sources: dict) -> set:
    """The names one module can take from another: read as an attribute, or imported from a pgolf module."""
    names = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "pgolf"):
                names.update(alias.name for alias in node.names)
    return names


def minify(
    source: str,
    filename: str = "<source>",
    preserve=(),
    unused=(),
    options=MINIFY_OPTIONS,
    outside=None,
    entries=None,
) -> str:
    """`source` minified; `outside` (reached_from_outside) lets unread imports go, None keeps every import; `entries`
    ({NAME: keys}, unread_entries) drops those entries of top-level dicts."""
    return _minified(_unrun_dropped(source, filename, unused, outside, entries), filename, preserve, options)


def _unrun_dropped(source: str, filename: str, unused=(), outside=None, entries=None):
    """The tree of `source` without what _DropUnrun removes."""
    try:
        tree = _DropUnrun(unused, outside, entries).visit(ast.parse(source, filename))
    except SyntaxError as e:
        raise PgolfError(f"{filename}: cannot be minified ({e}); fix the syntax error") from None
    for node in ast.walk(tree):  # a block whose only statement was dropped (a `check` call) still needs one
        if not isinstance(node, ast.Module) and isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]
    return ast.fix_missing_locations(tree)


def _minified(tree, filename: str, preserve=(), options=MINIFY_OPTIONS) -> str:
    return python_minifier.minify(ast.unparse(tree), filename=filename, preserve_globals=list(preserve), **options)


def package_modules(package_dir=PACKAGE_DIR, options=MINIFY_OPTIONS, config: dict | None = None) -> dict:
    """{module name: (path relative to the package's parent, minified source)} of submitted_files(config), sorted.

    A folder without __init__.py (a namespace package in the source tree) gets an empty package module.
    """
    return dict(_minified_package(package_dir, options, config)[0])


def package_renames(package_dir=PACKAGE_DIR, options=MINIFY_OPTIONS, config: dict | None = None) -> dict:
    """{old: new}: the shared names package_modules' sources spell short (shared_renames)."""
    return dict(_minified_package(package_dir, options, config)[1])


def _minified_package(package_dir, options, config):
    package_dir = Path(package_dir)
    sources = {
        path.relative_to(package_dir.parent).as_posix(): path.read_text()
        for path in submitted_files(package_dir, config)
    }
    key = (package_dir, tuple(sorted(options.items())), tuple(sources.items()))
    if key not in _MINIFIED:
        _MINIFIED[key] = _minify_all(sources, options)
    return _MINIFIED[key]


_MINIFIED = {}  # (package folder, options, sources) -> (modules, renames): minifying takes seconds


def _minify_all(sources: dict, options: dict) -> dict:
    preserve, unused, outside = preserved_globals(sources), unused_definitions(sources), reached_from_outside(sources)
    entries = unread_entries(sources, unused)
    trees = {rel: _unrun_dropped(source, rel, unused[rel], outside, entries[rel]) for rel, source in sources.items()}
    renames = rename_shared(trees)
    rename_locals(trees)
    preserve = sorted(set(preserve) | set(renames.values()))
    modules = {}
    for rel, tree in trees.items():
        modules[module_name(rel)] = (rel, _minified(tree, rel, preserve, options))
        for parent in Path(rel).parents:
            if parent.as_posix() != ".":
                init = f"{parent.as_posix()}/__init__.py"
                modules.setdefault(module_name(init), (init, ""))
    return dict(sorted(modules.items())), renames


# --- shared names -------------------------------------------------------------------------------------------

# Names kept as they are: the bootstrap calls ENTRIES' functions.
KEPT_NAMES = frozenset(ENTRIES.values())
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _package(rel: str) -> str:
    """The package a module's relative imports start from."""
    name = module_name(rel)
    return name if rel.endswith("__init__.py") else name.rpartition(".")[0]


def _imported_module(node, rel: str) -> str | None:
    """The absolute module name an ImportFrom reads (`from .x import a` in pgolf/y.py: pgolf.x)."""
    if not node.level:
        return node.module
    base = _package(rel).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


class _Names:
    """What one module does with its identifiers: the carried-module aliases it binds, the names it imports from
    carried modules, the attributes it reads on them, and the identifiers no module-wide renaming may touch."""

    def __init__(self, rel: str, tree, carried: set):
        self.rel, self.carried = rel, carried
        self.aliases = {}  # name -> the carried modules it is bound to (by an import)
        self.imported = set()  # names imported by name from a carried module
        self.fixed = set()  # parameters, class attributes, imports of other modules, `__all__` entries
        self.identifiers = set()  # every identifier spelled, attributes and keywords included
        self.bound_otherwise = set()  # names bound by anything but an import of a carried module
        self._visit(tree)

    def _visit(self, node):
        ids = self.identifiers
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self._import(node)
        elif isinstance(node, ast.Name):
            ids.add(node.id)
            if not isinstance(node.ctx, ast.Load):
                self.bound_otherwise.add(node.id)
        elif isinstance(node, ast.arg):
            ids.add(node.arg)
            self.fixed.add(node.arg)
            self.bound_otherwise.add(node.arg)
        elif isinstance(node, ast.Attribute):
            ids.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            ids.add(node.arg)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            ids.update(node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            ids.add(node.name)
            self.bound_otherwise.add(node.name)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            ids.add(node.name)
            self.bound_otherwise.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            ids.add(node.rest)
            self.bound_otherwise.add(node.rest)
        if isinstance(node, ast.ClassDef):  # what its body binds is an attribute of the class
            for stmt in node.body:
                self.fixed.update(_bound_in(stmt))
        if _assigned_name(node) == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
            self.fixed.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
        for child in ast.iter_child_nodes(node):
            self._visit(child)

    def _import(self, node):
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            self.identifiers.update({bound, *alias.name.split(".")})
            if isinstance(node, ast.Import):
                target = alias.name if alias.asname else bound
            else:
                source = _imported_module(node, self.rel)
                target = f"{source}.{alias.name}"
                if target not in self.carried:
                    if source in self.carried:
                        self.imported.add(alias.name)
                        self.bound_otherwise.add(bound)
                    else:
                        self.fixed.update({alias.name, bound})
                    continue
            if target in self.carried:
                self.aliases.setdefault(bound, set()).add(target)
            else:
                self.fixed.update({alias.name, bound})

    def module_of(self, node) -> str | None:
        """The carried module an expression names (an alias, or a submodule read as an attribute of one), if any."""
        if isinstance(node, ast.Name):
            modules = self.aliases.get(node.id, set())
            return next(iter(modules)) if len(modules) == 1 and node.id not in self.bound_otherwise else None
        if isinstance(node, ast.Attribute):
            base = self.module_of(node.value)
            return f"{base}.{node.attr}" if base and f"{base}.{node.attr}" in self.carried else None
        return None


def _bound_in(stmt) -> set:
    """The names a statement binds in the scope it runs in (a definition's name, assignment and loop targets,
    imports), not those of the functions and classes inside it."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {alias.asname or alias.name.split(".")[0] for alias in stmt.names}
    if isinstance(stmt, (ast.Lambda, *_COMPREHENSIONS)):
        return set()
    names = {stmt.id} if isinstance(stmt, ast.Name) and not isinstance(stmt.ctx, ast.Load) else set()
    for child in ast.iter_child_nodes(stmt):
        names |= _bound_in(child)
    return names


def _exception_classes(trees: dict) -> set:
    """Classes of the carried modules that derive from an exception: a traceback prints their names."""
    found, grew = set(), True
    while grew:
        grew = False
        for tree in trees.values():
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name not in found:
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    if bases & found or any(b.endswith(("Error", "Exception", "Interrupt")) for b in bases):
                        found.add(node.name)
                        grew = True
    return found


def shared_renames(trees: dict, kept=KEPT_NAMES) -> dict:
    """{old: new}: short names for the top-level names one carried module takes from another (imported by name, or
    read as an attribute of the module), which python-minifier must keep as they are, being global to each module.

    Applied to every module (rename_shared), the renaming is consistent: a module that defines such a name, or
    imports it by name from a carried module, spells it the new way everywhere it appears as a name (a definition,
    a reference, a local, an import); any module renames it where it reads it as an attribute of a carried module,
    never as an attribute of anything else. So a name is left alone where that could change what runs: in a module
    that spells it as its own, a parameter (a caller may pass it by keyword), a class attribute or a name imported
    from a module the script does not carry or from outside pgolf; an attribute read on a name that is a carried
    module in one place and something else in another; an `__all__` entry; a builtin; `kept`; and, where a carried
    module is passed around as a value (its attributes then read on any object), any name also read as an attribute
    of an object that is not a carried module (which also compresses better, spelled like the other reads). The new
    names are spelled nowhere in the carried code and are no module's name, so none can capture another; an exception
    class keeps its name (a traceback prints it) and gets the short one as an alias.
    """
    carried = {module_name(rel) for rel in trees}
    info = {rel: _Names(rel, tree, carried) for rel, tree in trees.items()}
    shared, fixed, elsewhere, escapes = set(), set(kept) | set(dir(builtins)), set(), False
    for rel, tree in trees.items():
        names = info[rel]
        shared |= names.imported
        fixed |= (_owned(tree, names) & names.fixed) | set(names.aliases)
        bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in bases and names.module_of(node):
                escapes = True  # a module passed around as a value
            if isinstance(node, ast.Attribute) and names.module_of(node.value):
                shared.add(node.attr)
            elif isinstance(node, ast.Attribute) and _root(node.value) in names.aliases:
                fixed.add(node.attr)  # read on a name that is a carried module somewhere in this module, not always
            elif isinstance(node, ast.Attribute):
                elsewhere.add(node.attr)
    if escapes:  # such a module's attributes may be read on any object (`module.main`)
        fixed |= elsewhere
    defined = set().union(*(_bound_in(stmt) for tree in trees.values() for stmt in tree.body))
    candidates = {x for x in shared & defined - fixed if not x.startswith("__")}
    counts = Counter()
    for tree in trees.values():
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None) or getattr(node, "name", None)
            if name in candidates:
                counts[name] += 1
    taken = set().union(*(n.identifiers for n in info.values())) | set(keyword.kwlist) | set(dir(builtins))
    taken |= {part for name in carried for part in name.split(".")}  # a package's global would hide its submodule
    fresh = (name for name in _short_names() if name not in taken)
    return {old: next(fresh) for old, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _root(node) -> str | None:
    """The name an attribute chain starts from (`a` of `a.b.c`)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _owned(tree, names: _Names) -> set:
    """The names a module spells as its own: its top-level bindings and what it imports by name from carried
    modules."""
    return set().union(*(_bound_in(stmt) for stmt in tree.body)) | names.imported


def _short_names(letters=string.ascii_uppercase + string.ascii_lowercase):
    yield from letters
    for first in letters:
        for second in letters + string.digits:
            yield first + second


class _Rename(ast.NodeTransformer):
    """Applies shared_renames' map to one module (see there for where a name is renamed): `own`, the part of the map
    the module spells as its own names (_owned), to its names; the whole map to the attributes it reads on carried
    modules and the names it imports from them."""

    def __init__(self, names: _Names, renames: dict, own: dict, exceptions: set):
        self.names, self.renames, self.own, self.exceptions = names, renames, own, exceptions

    def visit_Name(self, node):
        node.id = self.own.get(node.id, node.id)
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        module = self.names.module_of(node.value)
        if module and f"{module}.{node.attr}" not in self.names.carried:
            node.attr = self.renames.get(node.attr, node.attr)
        return node

    def visit_ImportFrom(self, node):
        source = _imported_module(node, self.names.rel)
        for alias in node.names:
            if source in self.names.carried and f"{source}.{alias.name}" not in self.names.carried:
                alias.name = self.renames.get(alias.name, alias.name)
                alias.asname = self.own.get(alias.asname, alias.asname)
        return node

    def visit_Global(self, node):
        node.names = [self.own.get(n, n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global

    def _definition(self, node):
        self.generic_visit(node)
        new = self.own.get(node.name)
        if new is None:
            return node
        if node.name in self.exceptions:  # keeps the name a traceback prints; the short one is an alias
            return [node, ast.Assign([ast.Name(new, ast.Store())], ast.Name(node.name, ast.Load()))]
        node.name = new
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _definition

    def visit_ExceptHandler(self, node):
        self.generic_visit(node)
        node.name = self.own.get(node.name, node.name)
        return node


def rename_shared(trees: dict, kept=KEPT_NAMES) -> dict:
    """Renames in place (shared_renames) the names the carried modules `trees` ({path: ast.Module}) share; returns
    the map."""
    renames = shared_renames(trees, kept)
    carried = {module_name(rel) for rel in trees}
    exceptions = _exception_classes(trees)
    for rel, tree in trees.items():
        names = _Names(rel, tree, carried)
        own = {old: new for old, new in renames.items() if old in _owned(tree, names)}
        ast.fix_missing_locations(_Rename(names, renames, own, exceptions).visit(tree))
    return renames


# --- local names --------------------------------------------------------------------------------------------

# Decorators that call the function they wrap with its callers' arguments, and nothing else: its parameters may be
# renamed where nothing outside the script calls it by keyword (a foreign decorator may: rename_locals keeps them).
PASSTHROUGH_DECORATORS = frozenset(
    {"property", "setter", "staticmethod", "classmethod", "contextmanager", "no_grad", "inference_mode", "cache"}
)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
LOCAL_LETTERS = string.ascii_uppercase + string.ascii_lowercase


class _Scope:
    def __init__(self, node, parent):
        self.node, self.parent, self.bound, self.globals, self.nonlocals = node, parent, set(), set(), set()
        self.is_class = isinstance(node, ast.ClassDef)
        self.is_function = isinstance(node, (*_FUNCTIONS, *_COMPREHENSIONS))


class _Bindings:
    """Every identifier of one module a function's scope may bind, with the scope it is in: occurrences, a list of
    (node, field, scope), where node.field is the identifier (a Name's id, an arg's arg, a def's name, ...)."""

    def __init__(self, tree):
        self.occurrences, self.fixed_bindings = [], set()  # fixed: (scope, name) a function binds by import or match
        self.escaping = set()  # functions whose callers may be outside the script (a foreign decorator's)
        self.inner = {}  # function -> its scope
        self.module = _Scope(tree, None)
        self._body(tree.body, self.module)

    def _body(self, nodes, scope):
        for node in nodes:
            self._visit(node, scope)

    def _bind(self, node, field, scope):
        scope.bound.add(getattr(node, field))
        self.occurrences.append((node, field, scope))

    def _visit(self, node, scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            outside = [
                *getattr(node, "decorator_list", []),
                *args.defaults,
                *args.kw_defaults,
                getattr(node, "returns", None),
            ]
            outside += [arg.annotation for arg in _all_args(node)]  # evaluated where the function is defined
            self._body(filter(None, outside), scope)
            if not isinstance(node, ast.Lambda):
                self._bind(node, "name", scope)
                if any(_decorator_name(d) not in PASSTHROUGH_DECORATORS for d in node.decorator_list):
                    self.escaping.add(node)
            inner = self.inner[node] = _Scope(node, scope)
            for arg in _all_args(node):
                self._bind(arg, "arg", inner)
            self._body(node.body if isinstance(node.body, list) else [node.body], inner)
        elif isinstance(node, ast.ClassDef):
            self._body([*node.decorator_list, *node.bases, *node.keywords], scope)
            self._bind(node, "name", scope)
            self._body(node.body, _Scope(node, scope))
        elif isinstance(node, _COMPREHENSIONS):
            self._visit(node.generators[0].iter, scope)
            inner = _Scope(node, scope)
            for i, gen in enumerate(node.generators):
                self._body([gen.target, *gen.ifs] + ([gen.iter] if i else []), inner)
            self._body([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt], inner)
        elif isinstance(node, ast.NamedExpr):  # binds in the function around its comprehensions
            self._visit(node.value, scope)
            while isinstance(scope.node, _COMPREHENSIONS):
                scope = scope.parent
            self._bind(node.target, "id", scope)
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.occurrences.append((node, "id", scope))
            else:
                self._bind(node, "id", scope)
        elif isinstance(node, ast.Global):
            scope.globals.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            scope.nonlocals.update(node.names)
            self.occurrences.extend((node, i, scope) for i in range(len(node.names)))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self._bind(node, "name", scope)
            self.generic(node, scope)
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
            names = [_bound(a) for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            names += [getattr(node, "name", None) or getattr(node, "rest", None)]
            scope.bound.update(filter(None, names))
            self.fixed_bindings.update((scope, n) for n in names if n)
            self.generic(node, scope)
        else:
            self.generic(node, scope)

    def generic(self, node, scope):
        for child in ast.iter_child_nodes(node):
            self._visit(child, scope)


def _decorator_name(node) -> str | None:
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)


def _resolve(name: str, scope: _Scope) -> _Scope:
    """The scope whose binding an occurrence of `name` in `scope` reads or writes (the module's: global or builtin)."""
    if name in scope.globals:
        return None
    if name in scope.bound and name not in scope.nonlocals:
        return scope
    scope = scope.parent
    while scope is not None and scope.parent is not None:
        if not scope.is_class:
            if name in scope.globals:
                return None
            if name in scope.bound and name not in scope.nonlocals:
                return scope
        scope = scope.parent
    return None


def _occurrence_name(node, field):
    return node.names[field] if isinstance(field, int) else getattr(node, field)


def _local_plan(trees: dict) -> tuple[dict, list]:
    """(rename_locals' map, [per module: (node, field, old name) of each occurrence to rename])."""
    keywords, strings, called = set(), set(), set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg:
                keywords.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
            elif isinstance(node, ast.Call):
                called.add(id(node.func))
    # what a function may be reached by other than a call in the carried code, so that code outside may call it: a
    # method's name as an attribute value (passed, stored, returned) anywhere, another's as a name value in its module
    # or an attribute value of an imported name (a module); nothing in pgolf fetches a function by a string
    names, attributes, module_attributes, modules = {}, set(), set(), set()
    for tree in trees.values():
        modules.update(
            _bound(a) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names
        )
    for rel, tree in trees.items():
        names[rel] = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in called:
                attributes.add(node.attr)
                if isinstance(node.value, ast.Name) and node.value.id in modules:
                    module_attributes.add(node.attr)
    plans, counts = [], Counter()
    fixed_in, units = defaultdict(set), defaultdict(set)  # unit -> names left as they are; identifier -> units
    for rel, tree in trees.items():
        b = _Bindings(tree)
        kept = set(b.fixed_bindings)
        for node, field, scope in b.occurrences:  # what a function reading its names by strings binds stays
            if isinstance(node, ast.Name) and node.id in ("locals", "vars", "eval", "exec"):
                kept.update((s, n) for s in _enclosing(scope) for n in s.bound)
        for node in ast.walk(tree):
            if isinstance(node, _FUNCTIONS):
                scope, args = b.inner[node], node.args
                defaulted = args.args[len(args.args) - len(args.defaults) :] + args.kwonlyargs
                name = getattr(node, "name", None)
                reached = attributes if scope.parent.is_class else module_attributes | names[rel]
                escapes = node in b.escaping or name in reached
                bound = _bound_instance(node, scope)
                for arg in _all_args(node):
                    if arg is not bound and (escapes or arg in defaulted or arg.arg in keywords or arg.arg in strings):
                        kept.add((scope, arg.arg))
        renamed = []
        for node, field, scope in b.occurrences:
            name = _occurrence_name(node, field)
            owner = _resolve(name, scope)
            unit = _unit(scope)
            if owner is None or not owner.is_function or (owner, name) in kept or name.startswith("__"):
                fixed_in[unit].add(name)
            else:
                renamed.append((node, field, name))
                counts[name] += 1
                units[name].add(unit)
        plans.append(renamed)
    # most frequent first; a name is free for an identifier where no unit it is renamed in spells it otherwise or
    # has given it to another identifier already
    renames, used = {}, defaultdict(set)  # unit -> new names given to its identifiers
    reserved = set(keyword.kwlist) | set(dir(builtins))
    for old, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        for new in _short_names(LOCAL_LETTERS):
            if new in reserved or any(new in fixed_in[u] or new in used[u] for u in units[old]):
                continue
            renames[old] = new
            for u in units[old]:
                used[u].add(new)
            break
    return renames, plans


def _enclosing(scope):
    while scope is not None:
        yield scope
        scope = scope.parent


def _unit(scope):
    """The outermost function-like scope around `scope` (None at module or class level)."""
    unit = None
    while scope is not None:
        if scope.is_function:
            unit = scope
        scope = scope.parent
    return unit


def _bound_instance(node, scope):
    """A method's first parameter (self, cls): Python passes it, never by keyword."""
    positional = [*node.args.posonlyargs, *node.args.args]
    static = any(_decorator_name(d) == "staticmethod" for d in getattr(node, "decorator_list", ()))
    return positional[0] if positional and scope.parent.is_class and not static else None


def _all_args(node):
    a = node.args
    return [x for x in (*a.posonlyargs, *a.args, a.vararg, *a.kwonlyargs, a.kwarg) if x is not None]


def rename_locals(trees: dict) -> dict:
    """Renames in place, in the carried modules `trees` ({path: ast.Module}), each identifier that functions bind
    (parameters, assignments, loop variables, nested definitions) to one short name, the same in every function and
    module, the most frequent first; returns the map {old: new}.

    Kept as they are: what a caller may pass by keyword (a parameter spelled as a keyword argument or as a string
    anywhere in the carried code, a parameter with a default, any parameter of a function that escapes: decorated by
    something outside PASSTHROUGH_DECORATORS or used other than by calling it, so that code outside the script may
    call it, as torch calls register_autograd's setup_context by keyword; a method's first parameter is renamed),
    names a function binds by an import or a match pattern, what a function calling locals, vars, eval or exec binds,
    dunder names, and the globals, builtins and class attributes. Two identifiers share a new name only where no
    outermost function (a unit: what one binding's occurrences can span) renames both, and none gets a name that a
    unit it is renamed in spells as anything else, so no renamed binding can capture or hide another.
    python-minifier, its own rename_locals off, keeps these names."""
    renames, plans = _local_plan(trees)
    for renamed in plans:
        for node, field, name in renamed:
            if isinstance(field, int):
                node.names[field] = renames[name]
            else:
                setattr(node, field, renames[name])
    return renames


# --- the script -----------------------------------------------------------------------------------------------


def payload(config: dict, modules: dict) -> bytes:
    """What the stub decompresses: the bootstrap, the config JSON (sparse_config: the bootstrap fills it in), then
    each module's path and source, NUL-separated (no Python source holds a NUL)."""
    parts = [BOOTSTRAP, json.dumps(sparse_config(config), sort_keys=True, separators=(",", ":"))]
    for rel, source in modules.values():
        parts += [rel, source]
    return "\0".join(parts).encode()


def lrzip_compress(data: bytes) -> bytes:
    """ZPAQ through lrzip (stdin to stdout); the same input gives the same bytes."""
    binary = shutil.which("lrzip")
    if binary is None:
        raise PgolfError("lrzip: binary not found on PATH; install it (apt-get install lrzip)")
    proc = subprocess.run([binary, *LRZIP_ARGS, "-q"], input=data, capture_output=True)
    if proc.returncode != 0:
        raise PgolfError(f"lrzip {' '.join(LRZIP_ARGS)} failed: {proc.stderr.decode(errors='replace')[-300:]}")
    return proc.stdout


def latin1_literal(data: bytes) -> str:
    """A triple-quoted str literal whose characters are the bytes of `data` (the file is read as latin-1).

    Escaped: backslash, CR (the tokenizer turns it into a newline), NUL (not allowed in source), and a double quote
    followed by another or ending the data (it could close the string). Everything else is one byte for one byte.
    """
    text, out = data.decode("latin-1"), []
    for i, char in enumerate(text):
        after = text[i + 1 : i + 2]
        if char == "\\":
            out.append("\\\\")
        elif char == "\r":
            out.append("\\r")
        elif char == "\0":
            out.append("\\x00" if after in "01234567" and after else "\\0")
        elif char == '"' and after in ('"', ""):
            out.append('\\"')
        else:
            out.append(char)
    return '"""' + "".join(out) + '"""'


def escape_key(blob: bytes) -> int:
    """The byte to XOR the blob with so that the fewest of its bytes land on NUL, CR or backslash, the bytes
    latin1_literal escapes (lrzip's headers hold many NULs): about 150 bytes less for the record script."""
    counts = Counter(blob)
    return min(range(256), key=lambda key: sum(counts[key ^ escaped] for escaped in b"\0\r\\"))


def blob_expression(blob: bytes) -> str:
    """The Python expression the stub reads the compressed blob from: a latin-1 literal of the blob XORed with
    escape_key's byte, XORed back."""
    key = escape_key(blob)
    return f"bytes(c^{key} for c in {latin1_literal(bytes(byte ^ key for byte in blob))}.encode('latin1'))"


def check_config(config: dict):
    """Build every config dataclass run_all's stages build from `config` (narrowed), so that their `check` methods,
    which the script leaves out, run here on the very values it runs with (pgolf.scriptconfig.full_config gives
    the same dataclasses back): a bad value fails the build, not a judge's run."""
    for holder, key, build in sections(config):
        build(holder[key])


def build_script(config: dict, preset: str, package_dir=PACKAGE_DIR) -> bytes:
    """The bytes of train_gpt.py for one preset (package_modules keeps the minified sources of each module set, so
    pgolf.capfit can size many presets)."""
    config = narrow_config(config, preset)
    check_config(config)
    blob = lrzip_compress(payload(config, package_modules(package_dir, config=config)))
    header = LINE.format(preset=preset, python=platform.python_version(), minifier=version("python-minifier"))
    return (header + "\n" + STUB.format(blob=blob_expression(blob))).encode("latin-1")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.codepack", description="Write the submission script.")
    parser.add_argument("--config", required=True, help="resolved config (JSON text or path)")
    parser.add_argument("--preset", required=True, help="the quantization preset this script submits")
    parser.add_argument("--out", required=True, help="train_gpt.py to write")
    args = parser.parse_args(argv)
    write_bytes(args.out, build_script(load_stage_config(args.config), args.preset))


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
