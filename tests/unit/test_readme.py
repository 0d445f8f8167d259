"""The README names the test behind each guarantee: every test it names exists, so a renamed or deleted test
cannot leave a guarantee pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text()
    named = re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", readme)
    assert len(named) > 30  # the README does cite its tests
    for path, name in named:
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
        if name:
            assert re.search(rf"^(?:async )?def {name}\b", (ROOT / path).read_text(), re.M), (
                f"README names {path}::{name}"
            )
    files = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    for bare in set(re.findall(r"(?<![/\w])(test_\w+\.py)\b", readme)):
        assert bare in files, f"README names {bare}, which does not exist"
