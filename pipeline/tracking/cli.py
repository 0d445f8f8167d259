"""``python -m pipeline.tracking uri | champion | ui | serve``: the store and the champion, as the config names
them, so the store and the model's name are declared once.

Consumes: ``params.yaml`` (``tracking``, ``registry``) and ``$MLFLOW_TRACKING_URI``. Produces: a printed URI, or
the MLflow UI (``make ui``) over the store with its artifact folder, or ``mlflow models serve`` of the champion
(``make serve``), each run by exec.
"""

from __future__ import annotations

import os

from pipeline.tracking.store import artifact_location, is_server, project_root, tracking_uri


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.tracking uri`` prints the store the pipeline logs to (``tracking.uri`` of
    params.yaml, or ``$MLFLOW_TRACKING_URI``); ``champion`` prints the registry's champion model URI
    (``models:/mnist-cnn@champion``); ``ui [mlflow ui options]`` opens the MLflow UI over the store
    (``make ui``), with the same artifact folder; ``serve [options]`` serves the champion
    (``make serve``). So the store and the model's name are declared once, in the config."""
    import sys

    from pipeline.config import load_params
    from pipeline.core.errors import fail, user_errors

    args = sys.argv[1:] if argv is None else argv
    with user_errors():
        cfg = load_params(project_root() / "params.yaml")
    uri, champion = tracking_uri(cfg.tracking), f"models:/{cfg.registry.name}@{cfg.registry.alias}"
    if args[:1] == ["uri"]:
        print(uri)
    elif args[:1] == ["champion"]:
        print(champion)
    elif args[:1] == ["serve"]:
        os.environ["MLFLOW_TRACKING_URI"] = uri  # else MLflow looks for ./mlflow.db wherever this runs
        os.execvp("mlflow", ["mlflow", "models", "serve", "-m", champion, "--env-manager", "local", *args[1:]])
    elif args[:1] == ["ui"] and is_server(uri):
        print(f"MLflow UI: {uri}/#/experiments?workflowType=machine_learning (the tracking server serves it)")
    elif args[:1] == ["ui"]:
        host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
        port = args[args.index("--port") + 1] if "--port" in args else "5000"
        # The UI opens on its GenAI view until told otherwise; this link (once) sets the model-training view.
        print(f"MLflow UI: http://{host}:{port}/#/experiments?workflowType=machine_learning", flush=True)
        artifacts = artifact_location(uri)
        extra = ["--default-artifact-root", artifacts] if artifacts else []
        os.execvp("mlflow", ["mlflow", "ui", "--backend-store-uri", uri, *extra, *args[1:]])
    else:
        fail("usage: python -m pipeline.tracking uri | champion | ui [mlflow ui options] | serve [options]")
