"""Opening a URL for a download, with its failure classified: what to retry, what to report.

Consumes: an http, https or file URL (``user:password@host`` becomes HTTP basic auth, never part of the request
line) and a timeout (seconds without data). Produces: an open response, or a :class:`TransferFailure` whose
``transient`` says whether another attempt may succeed (timeouts, refused connections, HTTP 5xx and 429).
Used by the IDX mirrors (:mod:`pipeline.data.download`) and the image-folder archives (:mod:`pipeline.data.folder`).
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class TransferFailure(Exception):
    """One attempt to get one file failed; ``transient`` failures are retried."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.transient = transient


def open_url(url: str, timeout: float) -> Any:
    parts = urllib.parse.urlsplit(url)
    headers = {}
    if parts.username is not None:  # user:password@host -> HTTP basic auth, never part of the request line
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise TransferFailure(f"HTTP {exc.code} {exc.reason}", transient=exc.code >= 500 or exc.code == 429) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        transient = isinstance(reason, OSError) and not isinstance(reason, FileNotFoundError)
        raise TransferFailure(f"{reason}", transient=transient) from None
    except (TimeoutError, ConnectionError) as exc:
        raise TransferFailure(f"{type(exc).__name__}: {exc}", transient=True) from None
