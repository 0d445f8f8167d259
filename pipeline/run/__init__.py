"""The Hydra app (``python -m pipeline.run [-m] [overrides]``): the command line checked before Hydra runs
(:mod:`~pipeline.run.overrides`), one job that trains and evaluates one config in one MLflow run with the same
stage code as DVC (:mod:`~pipeline.run.app`), and the multirun callback that gives a sweep its parent run and
its table (:mod:`~pipeline.run.sweep`)."""
