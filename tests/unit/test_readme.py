"""The docs name the test behind each guarantee: every test the README, CONTRIBUTING.md and docs/ name exists,
so a renamed or deleted test cannot leave a guarantee pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_a_doc_names_exists(doc):
    text = doc.read_text()
    named = re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", text)
    for path, name in named:
        assert (ROOT / path).is_file(), f"{doc.name} names {path}, which does not exist"
        if name:
            assert re.search(rf"^(?:async )?def {name}\b", (ROOT / path).read_text(), re.M), (
                f"{doc.name} names {path}::{name}"
            )
    files = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    for bare in set(re.findall(r"(?<![/\w])(test_\w+\.py)\b", text)):
        assert bare in files, f"{doc.name} names {bare}, which does not exist"


def test_the_readme_cites_its_tests():
    assert len(re.findall(r"tests/[\w/]+\.py", (ROOT / "README.md").read_text())) > 30
