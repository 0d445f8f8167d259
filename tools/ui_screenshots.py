"""The README's pictures, from what the pipeline produced: the MLflow UI and ``dvc plots`` in headless
Chromium (Debian's ``chromium``), and the confusion matrix the evaluate stage logged.

Consumes: a project folder (its ``params.yaml`` names the store) holding runs, best with a sweep, and the
reports of a ``dvc repro``. Produces, in ``--out`` (default ``docs/``): ``ui-runs.png`` (the experiment's
runs in the model-training view), ``ui-sweep-compare.png`` (the newest sweep's children compared),
``ui-run.png`` (one run's page) and ``ui-run-metrics.png`` (its metric charts, the training curve among
them), ``ui-model-card.png`` (the champion's registry version, its model card as the description),
``confusion-matrix.png`` (the champion's evaluation artifact) and ``dvc-plots.png`` (``dvc plots
show``'s page, rendered offline).

It starts ``python -m pipeline.tracking ui`` (what ``make ui`` runs) on a free port of 127.0.0.1, finds the
runs through the UI's REST API, lets Chromium render each page (the UI is a JavaScript application), and
stops the server.

Run: ``python tools/ui_screenshots.py [--project .] [--out docs] [--only NAME ...]`` (``--only ui-model-card``:
that picture alone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the MLflow UI exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer in {timeout} s") from None
            time.sleep(0.5)


def screenshot(url: str, out: Path, size: str = "1440,900") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             "--virtual-time-budget=20000", f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    print(f"wrote {out}")


#: Window sizes other than the default: the model card is a long page.
SIZES = {"ui-model-card": "1440,2300"}


def champion(base: str) -> tuple[str, dict] | None:
    """(registered model name, its champion version as the REST API gives it), or None when there is none."""
    for model in api(base, "registered-models/search?max_results=100")["registered_models"]:
        aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
        if "champion" in aliases:
            version = api(base, f"model-versions/get?name={model['name']}&version={aliases['champion']}")
            return model["name"], version["model_version"]
    return None


def pages(base: str) -> dict[str, str]:
    """The pages to capture: name -> URL (the UI's hash routes)."""
    experiment = api(base, "experiments/get-by-name?experiment_name=mnist-cnn")["experiment"]["experiment_id"]
    runs = api(base, "runs/search", {"experiment_ids": [experiment], "max_results": 500})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    sweeps = [r for r in runs if tags[r["info"]["run_id"]].get("sweep") == "true"]
    view = "?workflowType=machine_learning"  # the UI's model-training view (it otherwise opens on GenAI)
    out = {"ui-runs": f"{base}/#/experiments/{experiment}/runs{view}"}
    if sweeps:
        parent = max(sweeps, key=lambda r: r["info"]["start_time"])["info"]["run_id"]
        children = [r["info"]["run_id"] for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent]
        out["ui-sweep-compare"] = (
            f"{base}/#/compare-runs?runs={json.dumps(children)}&experiments={json.dumps([experiment])}"
        )
    finished = [
        r
        for r in runs
        if r["info"]["status"] == "FINISHED" and "test_accuracy" in {m["key"] for m in r["data"].get("metrics", [])}
    ]
    if finished:
        run = max(finished, key=lambda r: r["info"]["start_time"])["info"]["run_id"]
        out["ui-run"] = f"{base}/#/experiments/{experiment}/runs/{run}{view}"
        out["ui-run-metrics"] = f"{base}/#/experiments/{experiment}/runs/{run}/model-metrics{view}"
    if found := champion(base):
        name, version = found
        out["ui-model-card"] = f"{base}/#/models/{urllib.parse.quote(name)}/versions/{version['version']}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project", type=Path, default=Path("."), help="the project folder (its params.yaml names the store)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the PNG files go")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these pictures (names without .png)")
    args = parser.parse_args()
    wanted = (lambda name: name in args.only) if args.only else (lambda name: True)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking", "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=args.project, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", server)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, url in pages(base).items():
            if wanted(name):
                screenshot(url, args.out / f"{name}.png", size=SIZES.get(name, "1440,900"))
        if wanted("confusion-matrix"):
            confusion_matrix(base, args.out / "confusion-matrix.png")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    if not wanted("dvc-plots"):
        return
    with tempfile.TemporaryDirectory() as plots:
        subprocess.run(
            ["dvc", "plots", "show", "-o", plots], cwd=args.project, env=env, check=True, capture_output=True
        )
        screenshot(Path(plots, "index.html").as_uri(), args.out / "dvc-plots.png", size="1300,1150")


def confusion_matrix(base: str, out: Path) -> None:
    """The champion's confusion matrix, as its evaluation logged it (``plots/confusion_matrix.png``)."""
    if found := champion(base):
        run_id = {t["key"]: t["value"] for t in found[1].get("tags", [])}["registry.eval_run_id"]
        url = f"{base}/get-artifact?path=plots/confusion_matrix.png&run_uuid={run_id}"
        with urllib.request.urlopen(url, timeout=30) as response:
            out.write_bytes(response.read())
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
