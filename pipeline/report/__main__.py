"""``python -m pipeline.report --base REV [--out FILE]``: the change report (see :mod:`pipeline.report.change`)."""

from pipeline.core.errors import run_cli
from pipeline.report.change import main

run_cli(main)
