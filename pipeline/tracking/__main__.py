"""``python -m pipeline.tracking uri|champion|ui|serve`` (see :mod:`pipeline.tracking.cli`)."""

from pipeline.tracking.cli import main

main()
