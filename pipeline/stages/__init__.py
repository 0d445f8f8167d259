"""The pipeline's stages: ``download`` -> ``preprocess`` -> ``train`` -> ``evaluate``.

Each stage module holds ``run(cfg, ...)``, a function over the typed config that returns a result, and a
``main()`` of a few lines for DVC (``python -m pipeline.stages.<name>``, reading ``params.yaml``) that goes
through :func:`stage_main`. The Hydra app (:mod:`pipeline.run.app`) and the tests call the same ``run``
functions. Stages compose the other packages: data, model and tracking never call each other's jobs.

Adding a stage (CONTRIBUTING.md): a module here with ``run`` and ``main``, its output paths in the schema's
``PathsConfig`` and ``conf/config.yaml``'s ``paths``, a stage in ``dvc.yaml`` (``python -m pipeline.core.closure
--update dvc.yaml`` writes its code deps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.config import Config, load_params
from pipeline.core.errors import run_cli
from pipeline.core.timing import Timer


def stage_main(name: str, job: Callable[[Config, Timer], object], fast_exit: bool = False) -> None:
    """A DVC stage's process: log lines, ``params.yaml`` validated before any work, ``job(cfg, timer)``, the
    timing line, and a user's error as one line with exit status 2 (:func:`pipeline.core.errors.run_cli`).
    ``fast_exit`` (a stage's own process only: ``python -m``) skips TensorFlow's teardown on success."""

    def main() -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        timer = Timer(name)
        cfg = load_params()
        timer.mark("config")
        job(cfg, timer)
        timer.report()

    run_cli(main, fast_exit=fast_exit)
