"""Which of the project's own modules a module imports, directly or not, and a hash of their source.

Consumes: the source files of the ``pipeline`` package, parsed with :mod:`ast` (never imported; imports
inside functions count, since they run when the stage does). Produces: the import closure of a module,
which the test of ``dvc.yaml`` compares with each stage's ``deps`` so they cannot drift, and a hash of that
closure's source, part of the key of the Hydra app's prepared-data cache (:mod:`pipeline.data.prepare`), so a
change to the preparing code prepares the data again.

Run ``python -m pipeline.core.closure pipeline.stages.train`` to print a module's closure as ``dvc.yaml`` lists it, and
``python -m pipeline.core.closure --update dvc.yaml`` to rewrite each stage's code deps from the source.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from functools import cache
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def module_path(module: str) -> Path | None:
    """The source file of ``pipeline.x`` (or of the package itself), if it exists."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return PACKAGE_DIR / "__init__.py"
    rel = Path(*parts[1:])
    for candidate in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def imported_names(module: str) -> frozenset[str]:
    """Every module name that ``module``'s source imports anywhere (top level or in functions)."""
    path = module_path(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from pipeline import tracking` imports the module pipeline.tracking
            found.update(f"{target}.{alias.name}" for alias in node.names if module_path(f"{target}.{alias.name}"))
    return frozenset(found - {module})


def direct_imports(module: str) -> frozenset[str]:
    """The ``pipeline`` modules that ``module`` imports."""
    return frozenset(m for m in imported_names(module) if module_path(m) is not None)


def parents(module: str) -> list[str]:
    """The packages above ``module`` (``pipeline``, ``pipeline.model`` for ``pipeline.model.fit``): importing
    a submodule runs each of their ``__init__.py`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(module: str) -> list[Path]:
    """Source files ``module`` needs: itself, every ``pipeline`` module it imports transitively, and the
    ``__init__.py`` of every package above each of them (importing a submodule runs them). Sorted, relative
    to the project root."""
    seen, todo = {module}, [module]
    while todo:
        current = todo.pop()
        for dep in [*direct_imports(current), *parents(current)]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    root = PACKAGE_DIR.parent
    return sorted({p.relative_to(root) for m in seen if (p := module_path(m)) is not None})


def third_party(module: str) -> set[str]:
    """Top-level names of the other packages imported anywhere in ``module``'s closure (``keras``, ``numpy``)."""
    modules = {".".join(rel.with_suffix("").parts).removesuffix(".__init__") for rel in closure(module)}
    return {name.split(".")[0] for m in modules for name in imported_names(m) if module_path(name) is None and name}


def source_hash(module: str) -> str:
    """SHA-256 over the closure's file names and contents."""
    h = hashlib.sha256()
    for rel in closure(module):
        h.update(str(rel).encode() + b"\0" + (PACKAGE_DIR.parent / rel).read_bytes() + b"\0")
    return h.hexdigest()


def update_dvc_yaml(path: Path) -> bool:
    """Rewrite each stage's ``pipeline/*.py`` deps in ``path`` as the closure of its ``python -m`` module
    (other lines untouched); return whether anything changed."""
    import re

    text = path.read_text(encoding="utf-8")
    out: list[str] = []
    module = None
    for line in text.splitlines(keepends=True):
        if m := re.search(r"cmd: python3? -m (pipeline(?:\.\w+)+)", line):
            module = m.group(1)
        if re.fullmatch(r"\s+- pipeline/\S+\.py\n?", line):
            if module is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out += [f"{indent}- {rel.as_posix()}\n" for rel in closure(module)]
                module = None  # the block is written once, at its first line
            continue
        out.append(line)
    new = "".join(out)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main() -> None:
    if sys.argv[1:2] == ["--update"]:
        target = Path(sys.argv[2] if len(sys.argv) > 2 else "dvc.yaml")
        print(f"{target}: " + ("code deps rewritten" if update_dvc_yaml(target) else "up to date"))
        return
    for module in sys.argv[1:] or [PACKAGE]:
        print(f"{module}:")
        for rel in closure(module):
            print(f"  - {rel.as_posix()}")


if __name__ == "__main__":
    main()
