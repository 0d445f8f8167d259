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
