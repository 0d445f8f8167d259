"""The team set-up's decisions that need no server: database URLs, refused logins as messages, what `make
server` refuses before starting anything. The servers themselves are tested in tests/integration/test_team.py."""

from __future__ import annotations

import socket

import pytest
from mlflow.exceptions import MlflowException, RestException

from pipeline.core.errors import UserError, refusal
from pipeline.server.manage import auth_config, pg_binary, split_password, start


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://mlflow:s%40cret@db:5432/mlflow", ("postgresql+psycopg://mlflow@db:5432/mlflow", "s@cret")),
        ("postgres://u@db/x", ("postgresql+psycopg://u@db/x", None)),
        ("postgresql+psycopg2://u:pw@db/x", ("postgresql+psycopg2://u@db/x", "pw")),
        ("mysql://u:pw@db/x", ("mysql://u@db/x", "pw")),
    ],
)
def test_a_database_password_leaves_the_url_for_pgpassword(url, expected):
    assert split_password(url) == expected


def http_error(code: int) -> MlflowException:
    return MlflowException(
        f"API request to endpoint /api/2.0/mlflow/runs/create failed with error code {code} != 200. "
        "Response body: 'You are not authenticated.'"
    )


def test_a_refused_login_names_the_server_the_user_and_what_to_set(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-never-shown")
    import mlflow

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://127.0.0.1:5000")
    message = refusal(http_error(401))
    assert message is not None and "pw-never-shown" not in message
    assert message.startswith(
        "MLflow server http://127.0.0.1:5000 refused the login (HTTP 401) (/api/2.0/mlflow/runs/create)"
    )
    assert "user 'alice' with the password in MLFLOW_TRACKING_PASSWORD" in message

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert "no MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are set" in refusal(http_error(401))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-never-shown")

    # What the client raises for the server's JSON answer to a request without permission.
    denied = refusal(RestException({"error_code": "PERMISSION_DENIED", "message": "Permission denied."}))
    assert denied is not None and "user 'alice' is not allowed to do this (HTTP 403)" in denied


def test_other_errors_are_not_refusals():
    assert refusal(http_error(500)) is None
    assert refusal(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'x' not found"})) is None
    assert refusal(ValueError("error code 401")) is None  # only MLflow's own errors are read this way


def test_a_short_admin_password_is_refused_before_the_server_starts(tmp_path):
    with pytest.raises(UserError, match="MLFLOW_AUTH_ADMIN_PASSWORD: MLflow's auth app needs at least 12"):
        auth_config(tmp_path, "sqlite:///auth.db", {"MLFLOW_AUTH_ADMIN_PASSWORD": "short"})


def test_generated_secrets_are_private_and_kept_across_restarts(tmp_path):
    env: dict[str, str] = {}
    ini = auth_config(tmp_path, "postgresql+psycopg://mlflow@127.0.0.1:5/mlflow_auth", env)
    assert "database_uri = postgresql+psycopg://mlflow@127.0.0.1:5/mlflow_auth" in ini.read_text()
    assert len(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 12 and env["MLFLOW_AUTH_ADMIN_PASSWORD"] not in ini.read_text()
    for name in ("admin_password", "flask_secret_key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    again: dict[str, str] = {}
    auth_config(tmp_path, "sqlite:///x.db", again)
    assert again == env


def test_a_busy_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port} is already in use"):
            start(tmp_path / "state", port=port, backend="postgresql://u:pw@db/x")
    assert not (tmp_path / "state").exists()


def test_missing_postgresql_says_how_to_install_it_or_what_to_give(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("pipeline.server.manage.Path", lambda p: tmp_path / "none" if p == "/usr/lib/postgresql" else p)
    with pytest.raises(UserError, match=r"initdb not found: install the server \(Debian: apt-get install postgresql\)"):
        pg_binary("initdb")
