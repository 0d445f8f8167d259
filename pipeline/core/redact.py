"""Keep secrets out of everything the pipeline writes: params, tags, run names, artifacts, Hydra's files,
log lines and error messages.

Consumes: any text or config tree, the process environment, the command line. Produces: the same text with
every credential replaced by ``***``.

A credential is recognised three ways:

1. By position, anywhere inside a text: the user-info of a URL (``postgresql://u:pw@h/db`` ->
   ``postgresql://***@h/db``, also Hydra's escaped ``postgresql\\://u\\:pw@h``, also inside an override such
   as ``tracking.uri=...`` or a sweep list) and the value of a query parameter whose name looks secret
   (``?token=...``, ``&X-Amz-Signature=...``).
2. By value: every credential found in a validated config, on the command line or in the environment
   (variables named like ``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``, ``*_KEY``, and URL-valued ones such as
   ``MLFLOW_TRACKING_URI`` or ``DATA_MIRROR``) is registered once, and that literal is masked wherever it
   shows up later, in a URL or not.
3. By reference: :func:`externalize` replaces a credential on Hydra's command line with
   ``${oc.env:PIPELINE_SECRET_...}`` before Hydra parses it, so Hydra's own files and log lines only ever
   hold the reference; the job resolves it from the environment (inherited by joblib's workers).

:func:`install` routes every log record (any logger, any handler) and everything printed to stdout and stderr
(tracebacks included) through :func:`redact`, so a library that logs or prints a URL cannot leak it either.
"""

from __future__ import annotations

import logging
import os
import re
import secrets as _random
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

MASK = "***"
#: Prefix of the environment variables that carry externalized secrets to Hydra jobs.
ENV_PREFIX = "PIPELINE_SECRET_"
#: Shorter literals are not masked by value (masking "ab" everywhere would garble every message);
#: they are still masked by position inside URLs.
MIN_LITERAL = 4

_SECRET_NAME = r"[^=&\s#'\"]*(?:token|key|secret|password|passwd|pwd|signature|sig|auth|credential)[^=&\s#'\"]*"
# scheme://userinfo@ ; Hydra escapes ':' as '\:' inside sweep values, so both spellings count.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*\\?:(?:\\?/){2})(?P<userinfo>[^\s/@'\"]+)@")
_QUERY_SECRET = re.compile(rf"(?i)(?P<pre>[?&;](?P<name>{_SECRET_NAME})=)(?P<value>[^&\s#'\"\],]+)")
_REFERENCE = re.compile(r"\$\\?\{oc\.env\\?:" + ENV_PREFIX + r"\w+\\?\}")
_SECRET_ENV_NAME = re.compile(r"(?i)(PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|_KEY$|^KEY$|_KEY_)")

_known: set[str] = set()


# --------------------------------------------------------------------------- finding and masking


def find_secrets(text: str) -> list[str]:
    """The credentials inside ``text``: URL passwords (or the whole user-info when it has no password)
    and values of secret-looking query parameters."""
    found = []
    for match in _URL_USERINFO.finditer(text):
        userinfo = match.group("userinfo")
        user, sep, password = userinfo.replace("\\:", ":").partition(":")
        found.append(password if sep else user)
    found += [m.group("value") for m in _QUERY_SECRET.finditer(text)]
    return [s for s in found if s and not _REFERENCE.fullmatch(s)]


def register(*values: str) -> None:
    """Mask these literal values wherever they appear from now on (this process)."""
    for value in values:
        if isinstance(value, str) and len(value) >= MIN_LITERAL:
            _known.add(value)


def register_text(text: Any) -> None:
    if isinstance(text, str):
        register(*find_secrets(text))


def register_tree(data: Any) -> None:
    """Register every credential found in the strings of a config tree (dicts, lists, dataclasses as dicts)."""
    if isinstance(data, Mapping):
        for value in data.values():
            register_tree(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            register_tree(value)
    else:
        register_text(data)


def register_environment(env: Mapping[str, str] | None = None) -> None:
    """Register secret-named variables' values and every credential inside any variable's value."""
    env = os.environ if env is None else env
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) or _SECRET_ENV_NAME.search(name):
            register(value)
        register_text(value)


def redact(text: Any) -> Any:
    """``text`` with every credential masked; anything that is not a string is returned unchanged."""
    if not isinstance(text, str) or not text:
        return text
    out = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    out = _QUERY_SECRET.sub(lambda m: m.group("pre") + MASK, out)
    out = _REFERENCE.sub(MASK, out)
    for value in sorted(_known, key=len, reverse=True):
        if value in out:
            out = out.replace(value, MASK)
    return out


def redact_tree(data: Any) -> Any:
    """A copy of a config tree with every string redacted."""
    if isinstance(data, Mapping):
        return {k: redact_tree(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_tree(v) for v in data]
    return redact(data)


def externalize(text: str, env: MutableMapping[str, str] | None = None) -> str:
    """Replace each credential in ``text`` by ``${oc.env:PIPELINE_SECRET_<random>}`` and put its value in
    ``env`` (default: this process's environment, which child processes inherit).

    For Hydra overrides: OmegaConf resolves the reference when the job reads the value, while Hydra's
    files (``multirun.yaml``, ``.hydra/``), its log lines and the job's override list hold only the name.
    """
    env = os.environ if env is None else env
    by_value = {v: k for k, v in env.items() if k.startswith(ENV_PREFIX)}

    def reference(secret: str) -> str:
        register(secret)
        name = by_value.get(secret)
        if name is None:
            name = ENV_PREFIX + _random.token_hex(6)
            env[name] = secret
            by_value[secret] = name
        return "${oc.env:" + name + "}"

    def userinfo(m: re.Match) -> str:
        user, sep, password = m.group("userinfo").partition(":")
        if _REFERENCE.fullmatch(password or user):
            return m.group(0)
        masked = f"{user}:{reference(password)}" if sep else reference(user)
        return m.group("scheme") + masked + "@"

    def query(m: re.Match) -> str:
        value = m.group("value")
        return m.group(0) if _REFERENCE.fullmatch(value) else m.group("pre") + reference(value)

    return _QUERY_SECRET.sub(query, _URL_USERINFO.sub(userinfo, text))


# --------------------------------------------------------------------------- sinks


def _redacting_factory(factory):
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's business, not ours
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    make.redacting = True  # type: ignore[attr-defined]
    return make


class _RedactingStream:
    """A text stream proxy that redacts what is written (Hydra and the interpreter print errors to stderr)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding...: the real stream's
        return getattr(self._stream, name)


def format_exception(exc: BaseException) -> str:
    """A traceback, redacted: for errors reported by hand rather than by the interpreter."""
    return redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def install(env: Mapping[str, str] | None = None) -> None:
    """Register the environment's secrets and route every log record, and everything printed to stdout and
    stderr (tracebacks included), through :func:`redact`. Idempotent; every entry point calls it first."""
    register_environment(env)
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacting", False):
        logging.setLogRecordFactory(_redacting_factory(factory))
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _RedactingStream):
            setattr(sys, name, _RedactingStream(stream))
