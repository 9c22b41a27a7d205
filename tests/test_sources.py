"""Document sources: JSONL, Parquet, plain text and the builtin corpus, cleaned like upstream's export."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgolf.errors import PgolfError
from pgolf.sources import DataConfig, builtin_texts, data_config, iter_documents

TEXTS = ["First doc.", "  padded\x00text  ", "", "   \n ", "Last one\nwith two lines."]
CLEANED = ["First doc.", "padded text", "Last one\nwith two lines."]


def local(path, **data):
    return data_config({"source": "local", "local": {"path": str(path)}, **data})


def test_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)) + "\n")
    assert list(iter_documents(local(path))) == CLEANED


def test_parquet_streams_every_row_group(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": TEXTS * 3, "n": list(range(15))}), path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 8
    assert list(iter_documents(local(path))) == CLEANED * 3


def test_plain_text_blocks(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("one\ntwo\n\n\n  \nthree\x00four\n \nfive")
    assert list(iter_documents(local(path))) == ["one\ntwo", "three four", "five"]


def test_docs_path_overrides_the_source(tmp_path):
    path = tmp_path / "hub.jsonl"
    path.write_text(json.dumps({"text": "from the hub"}) + "\n")
    cfg = data_config({"source": "hf_docs"})
    assert list(iter_documents(cfg, docs_path=path)) == ["from the hub"]


def test_builtin_corpus_is_deterministic_capped_and_clean():
    cfg = data_config({"source": "builtin", "builtin": {"max_docs": 60}})
    first = list(iter_documents(cfg))
    assert first == list(iter_documents(cfg))
    assert len(first) == 60
    assert len(set(first)) == 60  # duplicate docstrings (e.g. _py_abc and abc) are dropped
    assert all(doc == doc.strip() and doc and "\x00" not in doc for doc in first)
    assert sum(map(len, first)) > 1000


def test_builtin_corpus_ends_with_pydoc_topics(monkeypatch):
    from pydoc_data.topics import topics

    from pgolf import sources

    monkeypatch.setattr(sources, "stdlib_files", lambda files=sources.stdlib_files()[:3]: files)
    texts = list(builtin_texts())
    expected = [topics[k] for k in sorted(topics)]
    assert texts[-3:] == expected[-3:]
    assert len(texts) > len(expected)  # the three modules' docstrings come first


def test_whole_config_or_data_section():
    assert data_config({"data": {"source": "builtin"}}).source == "builtin"
    assert data_config(DataConfig()).val_docs == 50_000


@pytest.mark.parametrize(
    "cfg, docs, message",
    [
        ({"source": "local", "local": {"path": "/nope/docs.jsonl"}}, None, "/nope/docs.jsonl: document file not found"),
        ({"source": "local"}, None, "data.local.path is not set"),
        ({"source": "hf_docs"}, None, "pass --docs resources/hub/<ds>/docs.jsonl"),
        ({"source": "hf_shards"}, None, "holds pre-tokenized shards"),
        ({"source": "builtin"}, "/nope/x.parquet", "/nope/x.parquet: document file not found"),
        ({"source": "ftp"}, None, "data.source: 'ftp' is not one of"),
        ({"source": "local", "colour": 1}, None, "data: unknown key(s) ['colour']"),
        ({"source": "local", "local": {"file": "x"}}, None, "data.local: unknown key(s) ['file']"),
    ],
)
def test_clear_errors(cfg, docs, message):
    with pytest.raises(PgolfError, match=None) as err:
        list(iter_documents(cfg, docs))
    assert message in str(err.value)


def test_bad_files_name_the_line_or_column(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(PgolfError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_documents(local(bad_json)))
    no_text = tmp_path / "notext.jsonl"
    no_text.write_text('{"body": "x"}\n')
    with pytest.raises(PgolfError, match=r"notext.jsonl:1: no \"text\" field"):
        list(iter_documents(local(no_text)))
    no_column = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_column)
    with pytest.raises(PgolfError, match=r"nocol.parquet: no column `text`"):
        list(iter_documents(local(no_column)))
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(PgolfError, match=r"fake.parquet: not a readable Parquet file"):
        list(iter_documents(local(not_parquet)))
