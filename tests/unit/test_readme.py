"""The docs name the test behind each guarantee: every test the README, CONTRIBUTING.md and docs/ name exists,
so a renamed or deleted test cannot leave a guarantee pointing at nothing; the README stays a five-minute
read; every figure docs/performance.md quotes is in the results file its row names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

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
    return table_rows(PERFORMANCE, "## Figures")


def table_rows(doc: Path, heading: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table under ``heading`` in ``doc``, by column name."""
    section = doc.read_text(encoding="utf-8").split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
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
    known = numbers(json.loads(record.read_text()))
    quoted = re.findall(r"\d+(?:\.\d+)?", row["value"])
    assert quoted, f"{row['figure']}: no number"
    for number in quoted:
        places = len(number.split(".")[1]) if "." in number else 0
        assert any(round(n, places) == float(number) for n in known), (
            f"{row['figure']}: {number} is not in {record.name}"
        )


def _fast_rows() -> list[dict[str, str]]:
    """The figures of the fast profile as it is now: the rows whose results file records the recipe it measured,
    asked for with ``train=fast`` (the default profile's files record theirs too)."""
    rows = []
    for row in _figures():
        path = re.fullmatch(r"`(benchmarks/results/[^`]+\.json)`", row["results file"])
        summary = json.loads((ROOT / path.group(1)).read_text()).get("summary", {}) if path else {}
        if path and "train_config" in summary and "train=fast" in summary.get("overrides", []):
            rows.append({**row, "path": path.group(1)})
    return rows


def test_the_fast_profiles_figures_are_of_its_recipe_as_it_is():
    """docs/performance.md quotes the fast profile's time (benchmarks/compare.py) and its accuracy per seed
    (benchmarks/fast_accuracy.py) for conf/train/fast.yaml as it is now: each results file records the composed
    train section it measured, and a change to the recipe fails here until both are measured again. The
    accuracy conf/train/fast.yaml promises (>= 0.985 on all 10,000 test images for every seed) is the file's."""
    from omegaconf import OmegaConf

    from pipeline.config import compose

    recipe = OmegaConf.to_container(compose(["train=fast"]).train)
    rows = _fast_rows()
    names = {Path(row["path"]).name for row in rows}
    assert any(n.startswith("fast-accuracy-") for n in names), "no accuracy per seed of the fast profile as it is"
    assert any(n.endswith("-train=fast.json") for n in names), "no time of the fast profile as it is"
    own = set(yaml.safe_load((ROOT / "conf" / "train" / "fast.yaml").read_text())) - {"defaults"}
    for row in rows:
        summary = json.loads((ROOT / row["path"]).read_text())["summary"]
        measured = summary["train_config"]  # a key added since keeps its default: only the recorded ones count
        assert own <= set(measured) and {k: recipe.get(k) for k in measured} == measured, (
            f"{row['figure']}: measured another recipe than conf/train/fast.yaml"
        )
        if "accuracies" in summary:
            assert summary["min_accuracy"] >= 0.985 and len(summary["accuracies"]) >= 3, row["figure"]
            assert all(s["test_samples"] == 10000 for s in json.loads((ROOT / row["path"]).read_text())["seeds"])


def test_the_fault_matrix_counts_line_matches_its_rows():
    """docs/faults.md's "Counts:" line is the matrix's: each row's outcome starts with its kind."""
    section = (ROOT / "docs" / "faults.md").read_text().split("## The matrix", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    outcomes = [[cell.strip() for cell in row.strip("|").split(" | ")][2] for row in rows]
    survived = sum(o.startswith("survived") for o in outcomes)
    one_line = sum(o.startswith("one line") for o in outcomes)
    counts = re.search(r"Counts: (\d+) cells; (\d+) survived, (\d+) one clear line, (\d+) DVC's lines with exit 0\.",
                       section)  # fmt: skip
    assert counts, "docs/faults.md: no Counts line"
    dvc_exit_0 = sum(o.startswith("DVC's lines, exit 0") for o in outcomes)
    assert survived + one_line + dvc_exit_0 == len(rows), [
        o for o in outcomes if not o.startswith(("survived", "one line", "DVC's"))
    ]
    assert tuple(map(int, counts.groups())) == (len(rows), survived, one_line, dvc_exit_0)
