"""The `lossless_caps_caseops_v1` text transform (docs/record-stack.md §2.4): case becomes operator characters.

Every maximal run of ASCII letters (a word) is lowercased and its case written as operators in front of it:
TITLE (U+E001) capitalises the word's first letter, ALLCAPS (U+E002) every letter of the word, CAPNEXT
(U+E003) the next letter only; a literal operator character in the input is escaped with ESC (U+E004).
Other characters (digits, punctuation, non-ASCII letters) pass through unchanged. `decode` inverts `encode`
exactly for every string and rejects malformed streams with a `CaseOpsError` naming the position.

The encoder works on UTF-8 bytes with C-level bytes methods (tokenization speed depends on it): ASCII letters
never occur inside a multi-byte UTF-8 sequence, so byte-level word scanning equals character-level scanning.
"""

import functools

from .errors import PgolfError

TRANSFORM_NAME = "lossless_caps_caseops_v1"
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
_NAMES = {TITLE: "TITLE", ALLCAPS: "ALLCAPS", CAPNEXT: "CAPNEXT", ESC: "ESC"}
_TITLE_B, _ALLCAPS_B, _CAPNEXT_B, _ESC_B = (op.encode() for op in OPERATORS)
_OPERATOR_PREFIX = b"\xee\x80"  # the first two UTF-8 bytes of U+E000..U+E03F

_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LOWER = bytes(range(ord("a"), ord("z") + 1))
# Byte classes for finding words: "A" capital, "a" small letter, " " anything else.
_CLASSES = bytes(b"A"[0] if b in _UPPER else b"a"[0] if b in _LOWER else b" "[0] for b in range(256))
# A capital that starts a word whose other letters are small: TITLE + its small letter (single capitals too).
_TITLE_WORD_STARTS = [(bytes([u]), _TITLE_B + bytes([s])) for u, s in zip(_UPPER, _LOWER)]


class CaseOpsError(PgolfError):
    """A character stream that `encode` cannot have produced."""


@functools.lru_cache(maxsize=1 << 16)
def _encode_word(word: bytes) -> bytes:
    """One ASCII word that holds a capital after its first letter (all-caps, camelCase, McDonald, ...)."""
    if len(word) >= 2 and word.isupper():
        return _ALLCAPS_B + word.lower()
    first = word[:1]
    head = _TITLE_B + first.lower() if first.isupper() else first
    rest = (_CAPNEXT_B + bytes([c]).lower() if c in _UPPER else bytes([c]) for c in word[1:])
    return head + b"".join(rest)


def _mixed_case_spans(classes: bytes) -> list[tuple[int, int]]:
    """Start and end of every word with a capital after another letter ("aA" or "AA" in the class string)."""
    spans = set()
    for pair in (b"aA", b"AA"):
        pos = classes.find(pair)
        while pos >= 0:
            end = classes.find(b" ", pos)
            end = len(classes) if end < 0 else end
            spans.add((classes.rfind(b" ", 0, pos) + 1, end))
            pos = classes.find(pair, end)
    return sorted(spans)


def encode_utf8(data: bytes) -> bytes:
    """The transform on UTF-8 bytes (what the tokenizer consumes)."""
    if _OPERATOR_PREFIX in data:
        data = data.replace(_ESC_B, _ESC_B + _ESC_B)
        for op in (_TITLE_B, _ALLCAPS_B, _CAPNEXT_B):
            data = data.replace(op, _ESC_B + op)
    spans = _mixed_case_spans(data.translate(_CLASSES))
    if spans:
        parts, done = [], 0
        for start, end in spans:
            parts += (data[done:start], _encode_word(data[start:end]))
            done = end
        parts.append(data[done:])
        data = b"".join(parts)
    # Every capital left starts a title-case word or is a one-letter word: both become TITLE + small letter.
    for capital, replacement in _TITLE_WORD_STARTS:
        data = data.replace(capital, replacement)
    return data


def encode(text: str) -> str:
    # surrogatepass: lone surrogates round-trip as well (they contain no ASCII bytes).
    return encode_utf8(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")


def _fail(pos: int, what: str):
    raise CaseOpsError(
        f"CaseOps stream, position {pos}: {what}; this is not {TRANSFORM_NAME} output "
        "(decode only text that caseops.encode produced, e.g. a tokenizer's decoded ids)"
    )


def decode(text: str) -> str:
    if not any(op in text for op in OPERATORS):
        return text
    out = []
    in_word = False  # the last character written was an ASCII letter
    allcaps = False  # inside a word that ALLCAPS opened
    pending = None  # (operator, position) waiting for the letter it applies to
    escaped = None  # position of an ESC waiting for its literal operator
    for pos, c in enumerate(text):
        if escaped is not None:
            if c not in _NAMES:
                _fail(escaped, f"ESC before {c!r}, which is not an operator character")
            out.append(c)
            escaped, in_word, allcaps = None, False, False
        elif c in _NAMES:
            if pending is not None:
                _fail(pending[1], f"{_NAMES[pending[0]]} followed by the operator {_NAMES[c]}")
            if c == ESC:
                escaped = pos
            elif c != CAPNEXT and in_word:
                _fail(pos, f"{_NAMES[c]} inside a word (it may only start one)")
            elif c == CAPNEXT and allcaps:
                _fail(pos, "CAPNEXT inside an ALLCAPS word")
            else:
                pending = (c, pos)
        elif ("a" <= c <= "z") or ("A" <= c <= "Z"):
            if pending is not None:
                allcaps = pending[0] == ALLCAPS
                pending = None
                c = c.upper()
            elif allcaps:
                c = c.upper()
            out.append(c)
            in_word = True
        else:
            if pending is not None:
                _fail(pending[1], f"{_NAMES[pending[0]]} before {c!r}, which is not an ASCII letter")
            out.append(c)
            in_word = allcaps = False
    if pending is not None:
        _fail(pending[1], f"dangling {_NAMES[pending[0]]} at the end of the text")
    if escaped is not None:
        _fail(escaped, "dangling ESC at the end of the text")
    return "".join(out)
