"""The served champion's web app (``make serve``): MLflow's own scoring server, with a JSON body decoded once.

Consumes: ``$PIPELINE_SERVED_MODEL``, a model URI (``python -m pipeline.tracking serve`` sets it to the champion's
version, resolved once, so that every worker serves the same one). Produces: the FastAPI app of
``mlflow.pyfunc.scoring_server.init`` (``/ping``, ``/health``, ``/version``, ``/invocations``, its request
timeout, its errors), whose ``/invocations`` route is replaced by :func:`invocations_route` (:func:`invoke`). Run:
``python -m pipeline.tracking serve [--host H] [--port P] [--workers N] [--timeout S]`` (``make serve``), which
starts uvicorn on :func:`create_app`.

Why not ``mlflow models serve`` as it is: its ``/invocations`` decodes a JSON body twice with ``json.loads``
(``scoring_server._parse_json_data``, then again in ``_split_data_and_params``), the largest cost of a batch of
JSON numbers after the network itself (docs/serving.md, "Speed"). ``scoring_server.invocations`` takes an
already decoded dict as it is, so this route decodes the body once, with orjson, and hands MLflow the dict;
everything else (content types, CSV and Parquet bodies, the LLM format, the messages) stays MLflow's code. A
body orjson refuses (not JSON, or what only Python's ``json`` reads, such as ``NaN``) goes to MLflow as bytes,
so it gets MLflow's own answer. ``tests/unit/test_scoring.py`` holds this app's answers equal to the stock app's.

And Python's garbage collector is paused while a request is handled (:class:`CollectorPause`): a 100-image batch
of JSON numbers is 81,000 small lists, whose creation sets off collections that walk them again and again (the
served model freezes the heap its network left, :class:`pipeline.tracking.served.ServedModel`, but not these).
They are freed by their reference counts when the request ends; the collector resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
from typing import Any

import orjson
from fastapi import Request  # at module level: FastAPI reads the handler's annotation from this module
from fastapi.responses import Response
from fastapi.routing import APIRoute
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

#: The environment variable that names the model to serve (a model URI).
MODEL_ENV = "PIPELINE_SERVED_MODEL"


def create_app() -> Any:
    """The app for the model ``$PIPELINE_SERVED_MODEL`` names: uvicorn's ``--factory`` target, one call per
    worker."""
    import mlflow.pyfunc

    uri = os.environ.get(MODEL_ENV)
    if not uri:
        raise SystemExit(f"${MODEL_ENV} is not set: start the server with python -m pipeline.tracking serve")
    return app_for(mlflow.pyfunc.load_model(uri))


def app_for(model: Any) -> Any:
    """MLflow's scoring app for ``model`` (a loaded pyfunc), its ``/invocations`` replaced by
    :func:`invocations_route`."""
    app = scoring_server.init(model)
    app.router.routes = [r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path == "/invocations")]
    app.post("/invocations")(invocations_route(model))
    return app


class CollectorPause:
    """A context in which Python's cyclic garbage collector does not run, shared by the threads that handle
    requests: it is off from the first entry to the last exit, and back to what it was before (on, unless someone
    else turned it off)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0 and self._was_enabled:
                gc.enable()


#: The one pause of this process's request handlers.
PAUSE = CollectorPause()


def invoke(body: bytes, content_type: str, model: Any, input_schema: Any) -> Any:
    """What ``/invocations`` answers ``body``: MLflow's ``scoring_server.invocations``, given a JSON body decoded
    once, with the collector paused (:data:`PAUSE`). Its result, an ``InvocationsResponse``; raises what MLflow
    raises."""
    with PAUSE:
        data: Any = body
        decoded: Any = None
        if content_type.split(";")[0].strip() == scoring_server.CONTENT_TYPE_JSON:
            with contextlib.suppress(orjson.JSONDecodeError):  # MLflow decodes it again and says what is wrong
                decoded = orjson.loads(body)
            if isinstance(decoded, dict):  # anything else gets MLflow's message too
                data = decoded
        result = scoring_server.invocations(data, content_type, model, input_schema)
        del data, decoded  # the request's objects freed by their reference counts, before the collector resumes
        return result


def invocations_route(model: Any) -> Any:
    """The ``/invocations`` handler: :func:`invoke` in a worker thread, as MLflow's own route runs its
    ``invocations``."""
    input_schema = model.metadata.get_input_schema()

    async def invocations(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type") or ""
        try:
            result = await asyncio.to_thread(invoke, body, content_type, model, input_schema)
        except MlflowException as exc:  # as MLflow's route answers one
            return Response(exc.serialize_as_json(), exc.get_http_status_code(), media_type="application/json")
        return Response(result.response, result.status, media_type=result.mimetype)

    return invocations
