"""Documents for the tokenizer and tokenize stages, as text strings in a fixed order.

`data.source` picks where they come from: `hf_docs` (the JSONL that pgolf.download fetched, passed as
`--docs`), `local` (`data.local.path`: .jsonl with {"text": ...} per line, .parquet with a `text` column,
anything else plain text with one document per blank-line block) or `builtin` (documentation that ships
with the Python interpreter: standard-library docstrings read with `ast`, no module imported, then the
`pydoc_data.topics` help texts). Every source is streamed, and every document is cleaned as upstream's
export does: NUL -> space, surrounding whitespace stripped, empty documents skipped.
"""

import ast
import dataclasses
import hashlib
import itertools
import json
import sysconfig
from pathlib import Path

from .errors import PgolfError
from .stageconfig import from_dict

SOURCES = ("hf_shards", "hf_docs", "local", "builtin")
# Standard-library folders that hold tests and test data rather than documentation.
_SKIPPED_STDLIB_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@dataclasses.dataclass
class LocalSource:
    path: str | None = None


@dataclasses.dataclass
class BuiltinSource:
    max_docs: int | None = None


@dataclasses.dataclass
class DataConfig:
    """The `data` section (defaults: the record's canonical CaseOps SP8192 data, docs/record-stack.md §2)."""

    name: str = "caseops-sp8192"
    source: str = "hf_shards"
    vocab_size: int = 8192
    val_docs: int = 50_000
    shard_tokens: int = 100_000_000
    tokenizer: str | None = None
    tokenizer_train_docs: int | None = None
    local: LocalSource = dataclasses.field(default_factory=LocalSource)
    builtin: BuiltinSource = dataclasses.field(default_factory=BuiltinSource)
    hf: dict = dataclasses.field(default_factory=dict)  # read by pgolf.download

    @classmethod
    def from_config(cls, data: dict) -> "DataConfig":
        values = dict(data or {})
        values["local"] = from_dict(LocalSource, values.get("local"), "data.local")
        values["builtin"] = from_dict(BuiltinSource, values.get("builtin"), "data.builtin")
        values["hf"] = dict(values.get("hf") or {})
        cfg = from_dict(cls, values, "data")
        if cfg.source not in SOURCES:
            raise PgolfError(f"data.source: {cfg.source!r} is not one of {list(SOURCES)}; fix it in your config")
        return cfg


def data_config(cfg) -> DataConfig:
    """A DataConfig from a DataConfig, a `data` section, or a whole config holding one."""
    if isinstance(cfg, DataConfig):
        return cfg
    if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict):
        cfg = cfg["data"]
    return DataConfig.from_config(cfg)


def clean(text) -> str:
    return (text or "").replace("\x00", " ").strip()


def _jsonl_texts(path: Path):
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PgolfError(f'{path}:{line_no}: not valid JSON ({e}); each line must be {{"text": ...}}') from None
            if not isinstance(record, dict) or "text" not in record:
                raise PgolfError(f'{path}:{line_no}: no "text" field; each line must be {{"text": ...}}')
            yield record["text"]


def _parquet_texts(path: Path):
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise PgolfError(f"{path}: not a readable Parquet file ({e}); re-create it or use .jsonl") from None
    if "text" not in parquet.schema_arrow.names:
        raise PgolfError(
            f"{path}: no column `text` (columns: {parquet.schema_arrow.names}); rename the document column to text"
        )
    for group in range(parquet.num_row_groups):
        yield from parquet.read_row_group(group, columns=["text"]).column("text").to_pylist()


def _plain_texts(path: Path):
    block = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block)
                block = []
    if block:
        yield "".join(block)


def file_texts(path):
    """Raw texts of one document file, by its suffix (.jsonl/.json, .parquet, else plain text)."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(
            f"{path}: document file not found; set data.local.path (or --docs) to an existing "
            ".jsonl, .parquet or text file"
        )
    if path.suffix in (".jsonl", ".json"):
        return _jsonl_texts(path)
    if path.suffix == ".parquet":
        return _parquet_texts(path)
    return _plain_texts(path)


def _docstrings_in_order(tree: ast.AST):
    """Docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        yield from _docstrings_in_order(child)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIPPED_STDLIB_DIRS & set(p.relative_to(root).parts[:-1]))


def _stdlib_docstrings():
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a few stdlib files are deliberately not valid for this interpreter
            continue
        yield from _docstrings_in_order(tree)


def builtin_texts():
    """Standard-library docstrings (files in sorted order, read with ast), then pydoc's topic help texts.

    Exact repeats are dropped: the standard library keeps pure-Python twins of some modules (_pyio, _py_abc,
    _pydecimal) whose docstrings would otherwise land in both val and train.
    """
    from pydoc_data.topics import topics

    seen = set()
    for text in itertools.chain(_stdlib_docstrings(), (topics[key] for key in sorted(topics))):
        key = hashlib.blake2b(clean(text).encode(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            yield text


def iter_documents(data_cfg, docs_path=None):
    """The cleaned documents of the configured source, in order; `docs_path` overrides the source's file."""
    cfg = data_config(data_cfg)
    if docs_path is not None:
        texts = file_texts(docs_path)
    elif cfg.source == "local":
        if not cfg.local.path:
            raise PgolfError("data.local.path is not set; point it at a .jsonl, .parquet or text file")
        texts = file_texts(cfg.local.path)
    elif cfg.source == "builtin":
        texts = builtin_texts()
    elif cfg.source == "hf_docs":
        raise PgolfError(
            "data.source hf_docs reads the documents that pgolf.download fetched: pass --docs resources/hub/<ds>/docs.jsonl"
        )
    else:
        raise PgolfError(
            f"data.source {cfg.source} holds pre-tokenized shards (pgolf.download writes the manifest); "
            "set data.source to hf_docs, local or builtin to build a tokenizer and shards from documents"
        )
    limit = cfg.builtin.max_docs if cfg.source == "builtin" and docs_path is None else None
    count = 0
    for text in texts:
        if limit is not None and count >= limit:
            return
        doc = clean(text)
        if doc:
            count += 1
            yield doc
