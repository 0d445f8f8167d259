"""Keep secrets out of params, tags and logs: credentials inside URLs are masked.

``redact("https://user:token@host/path?token=abc")`` -> ``"https://***@host/path?token=***"``.
"""

from __future__ import annotations

import re
import urllib.parse

_SECRET_QUERY = re.compile(r"(?i)^(.*(token|key|secret|password|passwd|pwd|signature|sig|auth|credential).*)$")


def redact(value: str) -> str:
    """Mask user:password in a URL, and query values whose names look secret; other strings pass through."""
    if not isinstance(value, str) or "://" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}=***" if _SECRET_QUERY.match(k) else f"{k}={v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
