"""The team's MLflow tracking server, an ops tool (``make server``, ``python -m pipeline.server
start|stop|status``): PostgreSQL, proxied artifacts, optional basic-auth (:mod:`~pipeline.server.manage`).
It starts ``mlflow server`` as a process and imports no MLflow itself."""
