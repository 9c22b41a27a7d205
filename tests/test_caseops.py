"""CaseOps: upstream's transformed text for the golden documents, a slow reference encoder, exact round trips."""

import gzip
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf import caseops
from pgolf.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, CaseOpsError
from pgolf.errors import PgolfError

from conftest import GOLDEN


def reference_encode(text: str) -> str:
    """docs/record-stack.md §2.4 word by word, character by character: the spec, slowly."""

    def word(w):
        if len(w) >= 2 and w.isupper():
            return ALLCAPS + w.lower()
        if len(w) >= 2 and w[0].isupper() and w[1:].islower():
            return TITLE + w.lower()
        out = (TITLE + w[0].lower()) if w[0].isupper() else w[0]
        return out + "".join(CAPNEXT + c.lower() if c.isupper() else c for c in w[1:])

    escaped = "".join(ESC + c if c in caseops.OPERATORS else c for c in text)
    return re.sub(r"[A-Za-z]+", lambda m: word(m.group()), escaped)


# Text rich in what the transform cares about: ASCII letters of both cases, operators, non-ASCII letters.
cased_text = st.text(
    alphabet=st.one_of(
        st.sampled_from("aAbBzZ xY\n'-" + TITLE + ALLCAPS + CAPNEXT + ESC + "éÉßİı"),
        st.characters(exclude_categories=("Cs",)),  # documents are UTF-8: no lone surrogates
    )
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
        ("iPhone", f"i{CAPNEXT}phone"),
        ("OpenAI", f"{TITLE}open{CAPNEXT}a{CAPNEXT}i"),
        ("McDonald's", f"{TITLE}mc{CAPNEXT}donald's"),
        ("I", f"{TITLE}i"),
        ("ABc", f"{TITLE}a{CAPNEXT}bc"),
        ("STRAßE", f"{ALLCAPS}stra\u00df{TITLE}e"),
        ("x2Y", f"x2{TITLE}y"),
        ("Éa", "Éa"),
        (f"a{TITLE}b{ESC}", f"a{ESC}{TITLE}b{ESC}{ESC}"),
        ("", ""),
    ],
)
def test_spec_examples(text, expected):
    assert caseops.encode(text) == expected
    assert caseops.decode(expected) == text


def test_golden_documents_match_upstream():
    rows = [json.loads(line) for line in gzip.open(GOLDEN, "rt", encoding="utf-8")]
    assert len(rows) == 322
    for row in rows:
        assert caseops.encode(row["text"]) == row["transformed"]
        assert caseops.decode(row["transformed"]) == row["text"]


@settings(max_examples=400, deadline=None)
@given(cased_text)
def test_round_trip_and_reference(text):
    encoded = caseops.encode(text)
    assert encoded == reference_encode(text)
    assert caseops.decode(encoded) == text
    assert caseops.encode_utf8(text.encode()) == encoded.encode()
    assert not re.search("[A-Z]", encoded)  # every ASCII capital became an operator


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec=None)))
def test_round_trip_any_code_point(text):  # lone surrogates included
    assert caseops.decode(caseops.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(cased_text)
def test_decode_of_any_stream_returns_text_or_names_the_problem(stream):
    try:
        text = caseops.decode(stream)
    except CaseOpsError as e:
        assert "position" in str(e)
    else:
        assert isinstance(text, str) and len(text) <= len(stream)


@pytest.mark.parametrize(
    "stream, position, what",
    [
        (f"ab{ESC}", 2, "dangling ESC"),
        (f"a{ESC}b", 1, "ESC before 'b'"),
        (f"ab{TITLE}c", 2, "TITLE inside a word"),
        (f"x {ALLCAPS}1", 2, "ALLCAPS before '1'"),
        (f"end{CAPNEXT}", 3, "dangling CAPNEXT"),
        (f"{CAPNEXT}{TITLE}a", 0, "CAPNEXT followed by the operator TITLE"),
        (f"{ALLCAPS}ab{CAPNEXT}c", 3, "CAPNEXT inside an ALLCAPS word"),
    ],
)
def test_malformed_streams_name_the_position(stream, position, what):
    with pytest.raises(CaseOpsError) as err:
        caseops.decode(stream)
    assert isinstance(err.value, PgolfError)
    assert f"position {position}: {what}" in str(err.value)
