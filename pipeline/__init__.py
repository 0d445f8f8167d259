"""A reproducible MNIST training pipeline: DVC stages, Hydra config, MLflow tracking, Keras training.

Stages (one module each, each a pure function over the typed config plus a short ``main()``):
:mod:`pipeline.download` -> :mod:`pipeline.preprocess` -> :mod:`pipeline.train` -> :mod:`pipeline.evaluate`.
:mod:`pipeline.run` drives the same functions as a Hydra app (single runs and multiruns).
"""

import os

# TensorFlow's C++ INFO lines (oneDNN notices, CPU feature banners) drown the pipeline's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# MLflow draws a progress bar for every artifact download (the registry gate fetches one): noise in a log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
