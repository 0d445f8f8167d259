"""docs/serving.md's speed figures are the results file's: every number in its table is in the file its row names,
the row's date is the file's, and the goals the page says are met are met by those numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.unit.test_readme import numbers, table_rows

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "docs" / "serving.md"


def _rows() -> list[dict[str, str]]:
    """The rows of the table under "## Speed", by column name."""
    return table_rows(SERVING, "## Speed")


def _record(row: dict[str, str]) -> tuple[Path, dict]:
    path = re.fullmatch(r"`(benchmarks/results/serving-[^`]+\.json)`", row["results file"])
    assert path, f"{row['figure']}: names no serving results file"
    return ROOT / path.group(1), json.loads((ROOT / path.group(1)).read_text())


def test_the_speed_table_has_the_columns_and_the_figures_the_issue_asks_for():
    rows = _rows()
    assert {"figure", "value", "results file", "command", "date", "CPU"} <= set(rows[0])
    figures = " ".join(row["figure"] for row in rows)
    for needed in ("p50", "p99", "100-image", "bare"):
        assert needed in figures, f"docs/serving.md's speed table has no {needed} figure"


@pytest.mark.parametrize("row", _rows(), ids=lambda row: row["figure"][:60])
def test_every_figure_is_in_the_results_file_its_row_names(row):
    path, record = _record(row)
    stamp = re.search(r"(\d{4})(\d{2})(\d{2})-\d{6}", path.name)
    assert stamp and row["date"] == "-".join(stamp.groups()), f"{row['figure']}: dated {row['date']}"
    assert row["command"].startswith("`python benchmarks/serving.py"), f"{row['figure']}: no command"
    assert row["CPU"] and row["CPU"].split(",")[0] in record["cpu"], f"{row['figure']}: CPU {row['CPU']}"
    known = numbers(record)
    quoted = re.findall(r"\d+(?:\.\d+)?", row["value"])
    assert quoted, f"{row['figure']}: no number"
    for number in quoted:
        places = len(number.split(".")[1]) if "." in number else 0
        assert any(round(n, places) == float(number) for n in known), f"{row['figure']}: {number} not in {path.name}"


def test_the_goals_the_page_states_follow_from_the_results():
    """The page's verdict on each goal (p50 at most 10 ms above the bare call; 100-image throughput at least half
    the bare call's, for JSON numbers and for .npy files), for the workers ``make serve`` runs, is what the results
    file's numbers say."""
    text = SERVING.read_text(encoding="utf-8")
    workers = re.search(r"`make serve` runs (\d+) workers?", text)
    assert workers, "docs/serving.md does not say how many workers make serve runs"
    assert "--workers $(SERVE_WORKERS)" in (ROOT / "Makefile").read_text()
    assert re.search(rf"^SERVE_WORKERS \?= {workers.group(1)}\b", (ROOT / "Makefile").read_text(), re.M)
    _, record = _record(_rows()[0])
    served = record["served"][f"workers_{workers.group(1)}"]
    verdicts = {
        "latency goal": served["single_json_p50_minus_bare_ms"] <= 10,
        "throughput goal, JSON numbers": served["batched_json_ratio_to_bare"] >= 0.5,
        "throughput goal, JSON numbers without the channel's axis": served["batched_json_hw_ratio_to_bare"] >= 0.5,
        "throughput goal, .npy files": served["batched_npy_ratio_to_bare"] >= 0.5,
    }
    for goal, met in verdicts.items():
        assert f"{goal}: {'met' if met else 'not met'}" in text, f"docs/serving.md: {goal}"
