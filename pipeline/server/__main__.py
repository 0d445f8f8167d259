"""``python -m pipeline.server start|stop|status``: the team's tracking server (see :mod:`pipeline.server.manage`)."""

from pipeline.server.manage import main

main()
