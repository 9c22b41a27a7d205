"""The repository stands alone: what it cites is in docs/, and every cited section of docs/record-stack.md exists."""

import re
import subprocess

from conftest import ROOT

CITATION = re.compile(r"docs/record-stack\.md (§[\d.]+(?:, §[\d.]+)*|Appendix [A-Z])")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        path = ROOT / name
        if name == "tests/test_docs.py":  # spells the patterns it looks for
            continue
        if path.suffix in {".py", ".smk", ".md", ".yaml", ".rst", ".sh", ".toml"} or path.name == "Snakefile":
            yield name, path.read_text()


def test_citations_point_into_the_repository():
    for name, text in tracked_text_files():
        assert not re.search(r"(?<!docs/)record-stack\.md", text), f"{name}: cite docs/record-stack.md"
        assert "SPEC.md" not in text, f"{name}: cite docs/contracts.md or docs/design.md"
        assert not re.search(r"\.\./shared/reference|seed-runs/", text), f"{name}: cites a file outside the repo"


def test_cited_sections_exist():
    headings = set()
    for line in (ROOT / "docs" / "record-stack.md").read_text().splitlines():
        if m := re.match(r"#+ (\d+(?:\.\d+)?)\.? ", line):
            headings.add("§" + m[1])
        elif m := re.match(r"#+ (Appendix [A-Z])\.", line):
            headings.add(m[1])
    for name, text in tracked_text_files():
        for match in CITATION.finditer(text):
            for section in re.findall(r"§[\d.]+|Appendix [A-Z]", match[0]):
                section = section.rstrip(".")
                assert section in headings, f"{name}: cites docs/record-stack.md {section}, which has no such section"
