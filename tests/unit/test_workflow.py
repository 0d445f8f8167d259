"""The GitHub workflow (.github/workflows/ci.yml) is valid YAML and runs what .ci/run and the docs promise."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def steps(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_the_workflow_parses_and_runs_lint_tests_and_the_change_report():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert "make lint" in steps(jobs["lint-and-test"]) and "make test" in steps(jobs["lint-and-test"])
    assert "make test-faults" in steps(jobs["lint-and-test"])  # the fault tier is not in make test
    report = steps(jobs["report"])
    assert jobs["report"]["if"] == "github.event_name == 'pull_request'"
    assert 'make report BASE="$BASE"' in report and "$GITHUB_STEP_SUMMARY" in report
