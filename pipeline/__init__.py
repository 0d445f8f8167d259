"""A reproducible image-classifier training pipeline: DVC stages, Hydra config, MLflow tracking, Keras training.

One subpackage per concern (CONTRIBUTING.md draws the tree): :mod:`pipeline.core` (infrastructure),
:mod:`pipeline.config` (the schema and its one source, ``conf/``), :mod:`pipeline.data` (formats, download,
preparation), :mod:`pipeline.model` (everything TensorFlow), :mod:`pipeline.tracking` (everything MLflow, the
registry gate), :mod:`pipeline.stages` (download -> preprocess -> train -> evaluate, for DVC and the app),
:mod:`pipeline.run` (the Hydra app and sweeps), :mod:`pipeline.predict` (a person's images) and
:mod:`pipeline.server` (the team's tracking server).
"""

import os

# TensorFlow's C++ INFO lines (oneDNN notices, CPU feature banners) drown the pipeline's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# MLflow draws a progress bar for every artifact download (the registry gate fetches one): noise in a log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _project_interpreter() -> None:
    """``python -m pipeline...`` run by an interpreter without the project's packages (DVC runs a stage's ``cmd``
    with whatever ``python`` PATH names: ``.venv/bin/dvc repro`` without the venv on PATH): re-run the same
    command with the project's ``.venv/bin/python``, or say in one line how to run it. Only for ``-m`` (while a
    ``-m`` module's packages import, ``sys.argv[0]`` is ``"-m"``); an import from code is never touched."""
    import importlib.util
    import sys
    from pathlib import Path

    if sys.argv[:1] != ["-m"] or importlib.util.find_spec("omegaconf") is not None:
        return
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    command = sys.orig_argv[sys.orig_argv.index("-m") :] if "-m" in sys.orig_argv else []
    # Not the venv already: its python may be a link to this very binary (a venv made by /usr/bin/python3), so
    # the prefix tells, not the executable's path.
    if venv.is_file() and Path(sys.prefix).resolve() != venv.parent.parent.resolve() and command:
        os.execv(venv, [str(venv), *command])
    print(
        f"error: {sys.executable} lacks the project's packages (omegaconf, TensorFlow, MLflow...): run `make run`, "
        "or `make install` and then `.venv/bin/python -m ...` (or activate .venv)",
        file=sys.stderr,
    )
    raise SystemExit(2)


_project_interpreter()
