"""``python -m pipeline.tracking uri | champion | ui | serve``: the store and the champion, as the config names
them, so the store and the model's name are declared once.

Consumes: ``params.yaml`` (``tracking``, ``registry``) and ``$MLFLOW_TRACKING_URI``. Produces: a printed URI, or
the MLflow UI (``make ui``) over the store with its artifact folder, or the champion's REST API (``make serve``:
MLflow's scoring server, :mod:`pipeline.tracking.scoring`, under uvicorn), each run by exec.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.tracking.store import artifact_location, is_server, project_root, tracking_uri


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.tracking uri`` prints the store the pipeline logs to (``tracking.uri`` of
    params.yaml, or ``$MLFLOW_TRACKING_URI``); ``champion`` prints the registry's champion model URI
    (``models:/mnist-cnn@champion``); ``ui [mlflow ui options]`` opens the MLflow UI over the store
    (``make ui``), with the same artifact folder; ``serve [options]`` serves the champion
    (``make serve``). So the store and the model's name are declared once, in the config."""

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
        serve(uri, cfg.registry.name, cfg.registry.alias, args[1:])
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


def serve(uri: str, name: str, alias: str, argv: list[str]) -> None:
    """Serve the champion (or ``--model URI``) with :mod:`pipeline.tracking.scoring` under uvicorn (exec), with
    the options of ``mlflow models serve`` that apply: ``--host``, ``--port``, ``--workers``, ``--timeout``. The
    alias is resolved here, once, so that every worker loads the same version, the one printed."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

    from pipeline.core.errors import fail
    from pipeline.tracking.scoring import MODEL_ENV
    from pipeline.tracking.store import retry

    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking serve", description="the champion's REST API")
    parser.add_argument("--model", help="a model URI to serve instead of the champion: models:/<name>/<version>, "
                        "models:/<model_id>, a model's folder")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="default 5000, as mlflow models serve")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with the model")
    parser.add_argument("--timeout", type=int, default=MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get(),
                        help="seconds a request may take before a 504 (MLflow's default)")  # fmt: skip
    opts = parser.parse_args(argv)
    if opts.workers < 1:
        parser.error(f"--workers {opts.workers}: at least 1")

    import mlflow

    import pipeline

    model, which = opts.model, ""
    if model is None:
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        from pipeline.core.errors import user_errors

        with user_errors():  # a server's refusal, a store that cannot work: one line
            try:
                version = retry(mlflow.MlflowClient(uri).get_model_version_by_alias, name, alias).version
            except mlflow.MlflowException as exc:
                if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise
                fail(f"{uri}: no model is {name}@{alias}: make run trains one and the registry gate makes it champion")
        model, which = f"models:/{name}/{version}", f" ({name}@{alias})"
    print(f"serving {model}{which} on http://{opts.host}:{opts.port} with {opts.workers} worker(s)", flush=True)
    os.environ.update({
        "MLFLOW_TRACKING_URI": uri,  # else MLflow looks for ./mlflow.db wherever a worker runs
        MODEL_ENV: model,
        MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name: str(opts.timeout),
    })  # fmt: skip
    app_dir = str(Path(pipeline.__file__).resolve().parents[1])  # where uvicorn imports the app from
    os.execv(sys.executable, [
        sys.executable, "-m", "uvicorn", "--factory", "pipeline.tracking.scoring:create_app", "--app-dir", app_dir,
        "--host", opts.host, "--port", str(opts.port), "--workers", str(opts.workers),
    ])  # fmt: skip
