"""The package's import graph keeps the design: dependencies point one way, MLflow only in ``pipeline.tracking``,
TensorFlow and Keras only in ``pipeline.model``, and the unit tier free of TensorFlow but for the model's tests.

Read from the source with :mod:`ast` (:mod:`pipeline.core.closure`), imports inside functions included: they run
when the code does. Nothing is imported here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.core.closure import PACKAGE_DIR, direct_imports, imported_names, parents, third_party

ROOT = PACKAGE_DIR.parent
#: What each subpackage may import from the others: the layers, lowest first.
LAYERS = {
    "core": set(),
    "config": {"core"},
    "data": {"core", "config"},
    "model": {"core", "config", "data"},
    "tracking": {"core", "config", "data"},
    "stages": {"core", "config", "data", "model", "tracking"},
    "predict": {"core", "config", "data", "model", "tracking"},
    "run": {"core", "config", "data", "stages", "tracking"},
    "server": {"core"},
    "report": {"core", "config", "tracking"},
}
#: The unit tests of the model package itself: the only unit tests that may import TensorFlow.
MODEL_TESTS = {"test_model.py", "test_kernels.py", "test_train.py"}


def modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def edges(module: str) -> set[str]:
    """What ``module`` imports of the package, less the packages above it (importing a sibling runs those)."""
    return set(direct_imports(module)) - set(parents(module))


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_circle_between_modules_or_subpackages():
    graph = {m: edges(m) for m in modules()}
    assert cycle(graph) is None, f"import circle: {' -> '.join(cycle(graph) or [])}"
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if (src := subpackage(module)) is not None:
            packages.setdefault(src, set()).update(d for d in map(subpackage, deps) if d not in (None, src))
    assert cycle(packages) is None, f"subpackage circle: {' -> '.join(cycle(packages) or [])}"
    assert set(packages) == set(LAYERS), "a new subpackage needs its place in LAYERS"
    for name, deps in packages.items():
        assert deps <= LAYERS[name], f"pipeline.{name} imports pipeline.{sorted(deps - LAYERS[name])}"


def test_mlflow_only_in_tracking_and_tensorflow_only_in_model():
    for module in modules():
        names = {n.split(".")[0] for n in imported_names(module)}
        if names & {"mlflow"}:
            assert subpackage(module) == "tracking", f"{module} imports MLflow"
        if names & {"tensorflow", "keras"}:
            assert subpackage(module) == "model", f"{module} imports {sorted(names & {'tensorflow', 'keras'})}"


def test_the_rules_catch_a_breach():
    """The checks above can fail: an MLflow import outside tracking and a circle are seen as such."""
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    assert "mlflow" in third_party("pipeline.stages.train") and "keras" in third_party("pipeline.stages.train")
    assert not {"mlflow", "tensorflow", "keras"} & third_party("pipeline.config")


def test_the_unit_tier_imports_no_tensorflow_but_the_models_own_tests():
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        heavy = {n.split(".")[0] for n in names} & {"tensorflow", "keras"}
        for name in (n for n in names if n.startswith("pipeline.")):
            heavy |= third_party(name) & {"tensorflow", "keras"} if Path(*name.split(".")).parts else set()
        if path.name not in MODEL_TESTS:
            assert not heavy, f"{path.name} imports {sorted(heavy)}: the unit tier stays free of TensorFlow"
