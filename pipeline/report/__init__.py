"""A report for a change: the workspace's experiment against a baseline revision's, in one Markdown file.

Consumes: the DVC project at the workspace and at ``BASE`` (a git revision): ``params.yaml``, the metrics, the
training curve and the per-class error rates (from git, or from DVC's cache for cached outputs: the baseline's
outputs must be there, from ``dvc pull`` or its own ``dvc repro``), the evaluation's run record
(``paths.eval_info``) and that run's test predictions in MLflow. Produces: ``reports/change.md`` and beside it
``change.png`` (both revisions' plots), holding ``dvc params diff``, ``dvc metrics diff``, links to both MLflow
runs and the registry gate's decision between the two models (the same rule as the gate,
:func:`pipeline.tracking.gate.decide`, on the same test images).

Run: ``make report BASE=main`` (``python -m pipeline.report --base main [--out FILE]``); the GitHub workflow
appends the file to the job summary.
"""
