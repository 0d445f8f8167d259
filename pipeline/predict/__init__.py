"""Prediction on a person's images: the MNIST-style preparation of a photographed digit
(:mod:`~pipeline.data.imageprep`) and the champion's answer for each image (:mod:`~pipeline.predict.images`,
``python -m pipeline.predict IMAGE...``)."""
