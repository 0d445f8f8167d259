"""Stage ``download``: the dataset's files, verified, into ``paths.raw_dir`` (:mod:`pipeline.data.download`).

Consumes: ``dataset`` and ``$DATA_MIRROR``. Produces: ``paths.raw_dir``. Run: ``dvc repro download``, or
``python -m pipeline.stages.download`` (reads params.yaml).
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.core.timing import Timer
from pipeline.data.download import DownloadResult, download
from pipeline.stages import stage_main


def run(cfg: Config) -> DownloadResult:
    return download(cfg.dataset, cfg.paths.raw_dir)


def main(fast_exit: bool = False) -> None:
    def job(cfg: Config, timer: Timer) -> None:
        run(cfg)
        timer.mark("download")

    stage_main("download", job, fast_exit)


if __name__ == "__main__":
    main(fast_exit=True)
