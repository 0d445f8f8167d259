"""Secrets: found by position in any text, by value once registered, and swapped for references on Hydra's
command line; every log record and everything printed goes through the same masking."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from pipeline.core import redact


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    monkeypatch.setattr(redact, "_known", set())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:pw@h/db", "postgresql://***@h/db"),
        ("tracking.uri=postgresql://u:pw@h/db", "tracking.uri=postgresql://***@h/db"),  # an override, not a URL
        (
            "dataset.mirrors=[http://a:b@h1/,sqlite:///x.db,https://tok@h2/p]",
            "dataset.mirrors=[http://***@h1/,sqlite:///x.db,https://***@h2/p]",
        ),
        (r"uri=postgresql\://u\:pw@h/db", r"uri=postgresql\://***@h/db"),  # Hydra's escaped sweep value
        ("GET https://h/x?token=abc&x=1&X-Amz-Signature=sig9", "GET https://h/x?token=***&x=1&X-Amz-Signature=***"),
        ("error: 'https://u:p,w@h' refused", "error: 'https://***@h' refused"),
        ("uri=postgresql://u:${oc.env:PIPELINE_SECRET_ab12}@h/db", "uri=postgresql://***@h/db"),
        ("sqlite:////tmp/mlflow.db and user@example.com", "sqlite:////tmp/mlflow.db and user@example.com"),
    ],
)
def test_credentials_are_masked_wherever_they_sit(text, expected):
    assert redact.redact(text) == expected


def test_registered_values_are_masked_outside_urls_too():
    redact.register_tree({"tracking": {"uri": "postgresql://u:hunter22@h/db"}, "n": 3})
    redact.register_environment({"MLFLOW_TRACKING_PASSWORD": "s3cr3t-pw", "AWS_SECRET_ACCESS_KEY": "AKIAXYZ",
                                 "HOME": "/root", "DATA_MIRROR": "https://bob:mirrorpw@m/"})  # fmt: skip
    assert (
        redact.redact("login failed for hunter22; s3cr3t-pw AKIAXYZ mirrorpw /root")
        == "login failed for ***; *** *** *** /root"
    )
    redact.register("ab")  # too short to mask by value (it would garble every message)
    assert redact.redact("abc") == "abc"


def test_trees_and_non_strings():
    assert redact.redact_tree({"a": ["https://u:p@h/", 1, None], "b": {"c": "x?key=1"}}) == {
        "a": ["https://***@h/", 1, None],
        "b": {"c": "x?key=***"},
    }


def test_log_records_and_printed_text_are_redacted(monkeypatch):
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    redact.install(env={"MY_TOKEN": "tok-123456"})
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("test_redact")
    logger.addHandler(handler)
    try:
        logger.warning("mirror %s failed, token %s", "http://u:pw@h/", "tok-123456")
        try:
            raise ValueError("cannot open postgresql://u:pw@h/db")
        except ValueError:
            logger.exception("boom")
        print("printed tok-123456", file=sys.stderr)
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(logging._logRecordFactory)  # type: ignore[attr-defined]
    logged = handler.stream.getvalue()
    assert "mirror http://***@h/ failed, token ***" in logged
    assert "ValueError: cannot open postgresql://***@h/db" in logged
    assert "pw" not in logged.replace("password", "") and "tok-123456" not in logged
    assert stream.getvalue() == "printed ***\n"
