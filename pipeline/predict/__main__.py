"""``python -m pipeline.predict IMAGE...``: the champion's answer for each image (see :mod:`pipeline.predict.images`)."""

import logging

from pipeline.core.errors import run_cli
from pipeline.predict.images import main

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
run_cli(main)
