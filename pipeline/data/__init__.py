"""Data: file formats (:mod:`~pipeline.data.formats`: IDX, the processed ``.npz`` splits), the verified download
from mirrors (:mod:`~pipeline.data.download`), the preparation into splits (:mod:`~pipeline.data.preprocess`)
and the Hydra app's content-addressed cache of prepared data (:mod:`~pipeline.data.prepare`). NumPy only: no
TensorFlow, no MLflow.

A new dataset format is a reader in ``formats.py`` and its preparation in ``preprocess.py`` (CONTRIBUTING.md).
"""
