"""``python -m pipeline.config [overrides]`` writes params.yaml; ``python -m pipeline.config clean`` removes outputs."""

from pipeline.config.load import main

main()
