"""Stage ``preprocess``: ``paths.raw_dir`` -> ``train.npz`` and ``test.npz`` in ``paths.processed_dir``
(:mod:`pipeline.data.preprocess`).

Consumes: the verified raw files. Produces: ``paths.processed_dir``. Run: ``dvc repro preprocess``, or
``python -m pipeline.stages.preprocess`` (reads params.yaml).
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.core.timing import Timer
from pipeline.data.preprocess import PreprocessResult, preprocess
from pipeline.stages import stage_main


def run(cfg: Config) -> PreprocessResult:
    return preprocess(cfg.dataset, cfg.paths.raw_dir, cfg.paths.processed_dir)


def main(fast_exit: bool = False) -> None:
    def job(cfg: Config, timer: Timer) -> None:
        run(cfg)
        timer.mark("preprocess")

    stage_main("preprocess", job, fast_exit)


if __name__ == "__main__":
    main(fast_exit=True)
