"""The docs name the test behind each guarantee: every test the README, CONTRIBUTING.md and docs/ name exists,
so a renamed or deleted test cannot leave a guarantee pointing at nothing; the README stays a five-minute
read; every figure docs/performance.md quotes is in the results file its row names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
PERFORMANCE = ROOT / "docs" / "performance.md"


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


def test_the_readme_has_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_docs_together_cite_more_than_30_tests():
    cited = {m for doc in DOCS for m in re.findall(r"tests/[\w/]+\.py(?:::\w+)?", doc.read_text())}
    assert len(cited) > 30


def _figures() -> list[dict[str, str]]:
    """The rows of docs/performance.md's figures table (the table under "## Figures"), by column name."""
    section = PERFORMANCE.read_text().split("## Figures", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_the_figures_table_has_the_columns_and_rows():
    rows = _figures()
    assert len(rows) >= 10
    assert {"figure", "value", "results file", "command", "date", "CPU"} <= set(rows[0])


@pytest.mark.parametrize("row", _figures(), ids=lambda row: row["figure"][:60])
def test_every_figure_in_performance_md_is_in_the_results_file_its_row_names(row):
    path = re.fullmatch(r"`(benchmarks/results/[^`]+\.json)`", row["results file"])
    assert path, f"{row['figure']}: names no results file"
    record = ROOT / path.group(1)
    assert record.is_file(), f"{row['figure']}: {record.name} does not exist"
    stamp = re.search(r"(\d{4})(\d{2})(\d{2})-\d{6}", record.name)
    assert stamp and row["date"] == "-".join(stamp.groups()), f"{row['figure']}: dated {row['date']}"
    assert row["command"].startswith("`python benchmarks/"), f"{row['figure']}: no command"
    known = _numbers(json.loads(record.read_text()))
    quoted = re.findall(r"\d+(?:\.\d+)?", row["value"])
    assert quoted, f"{row['figure']}: no number"
    for number in quoted:
        places = len(number.split(".")[1]) if "." in number else 0
        assert any(round(n, places) == float(number) for n in known), (
            f"{row['figure']}: {number} is not in {record.name}"
        )
