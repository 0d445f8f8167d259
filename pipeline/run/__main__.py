"""``python -m pipeline.run [overrides]``: the Hydra app (see :mod:`pipeline.run.app`)."""

from pipeline.run.app import main

main()
