"""The model: everything that imports TensorFlow or Keras lives here, and nowhere else.

- :mod:`~pipeline.model.architectures`: the networks, one builder each, registered by ``model.name``;
- :mod:`~pipeline.model.fit`: fitting the configured network (:func:`~pipeline.model.fit.fit`), with observers
  for its progress;
- :mod:`~pipeline.model.score`: loading a saved model, the forward pass, the test metrics;
- :mod:`~pipeline.model.runtime`: TensorFlow's import, its notices once;
- :mod:`~pipeline.model.patches`: every private TensorFlow/Keras API the project uses, behind one switch.

A new model is a builder in ``architectures.py`` and a file in ``conf/model/`` (CONTRIBUTING.md).
"""
