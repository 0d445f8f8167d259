"""dvc.yaml's stage dependencies cannot drift from the code: each stage lists exactly its import closure."""

from __future__ import annotations

import yaml

from pipeline.core.closure import closure, direct_imports
from tests.conftest import ROOT


def stage_code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith("pipeline/")}


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].split(" -m ", 1)[1].split()[0]
        expected = {p.as_posix() for p in closure(module)}
        listed = stage_code_deps(stage)
        assert listed == expected, (
            f"dvc.yaml stage {name!r}: missing {sorted(expected - listed)}, not imported {sorted(listed - expected)}"
            f" (python -m pipeline.core.closure --update dvc.yaml rewrites them)"
        )


def test_the_closure_follows_imports_inside_functions_and_package_imports():
    assert "pipeline.data.download" in direct_imports(
        "pipeline.data.preprocess"
    )  # raw_name: the case that drifted once
    # `from pipeline import tracking` (run.py, inside run_job) names the module pipeline.tracking.
    assert {"pipeline.tracking", "pipeline.stages.train", "pipeline.stages.evaluate"} <= direct_imports(
        "pipeline.run.app"
    )
    assert all(p.parts[0] == "pipeline" for p in closure("pipeline.stages.train"))
