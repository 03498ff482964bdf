"""Database URLs made safe to show: in logs, error messages and ``stamp check-config``.

A leaf module (no asyncpg), so the configuration can use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit

MASK = "***"

# Query parameters that carry a secret: libpq's and asyncpg's `password` and
# `sslpassword` (the client key's passphrase), and anything named like a secret.
# `passfile`, `sslkey` and `sslcert` are file paths, shown as they are.
_SECRET_PARAMETER = re.compile(r"pass(word|phrase)|secret|token", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with the password masked wherever it can be given: the user-info
    (``user:pw@host``) and secret query parameters (``?password=``, ``?sslpassword=``,
    in any case or percent-encoding of the name). Everything else is kept as written."""
    parts = urlsplit(dsn)
    if parts.fragment:
        # A '#' (unencoded, in a password) cuts the URL short there: the part before it
        # would pass for a host and port, the rest for a fragment. Show neither.
        return f"{parts.scheme}://{MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        # The last @ ends the user-info: a password may contain an unencoded @.
        userinfo, hosts = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            netloc = f"{user}:{MASK}@{hosts}"
    query = "&".join(_mask_parameter(p) for p in parts.query.split("&"))
    # Not urlunsplit: it drops the empty authority of postgresql:///db?host=/run/pg.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if parts.query else "")


def _mask_parameter(pair: str) -> str:
    name, has_value, _ = pair.partition("=")
    if has_value and _SECRET_PARAMETER.search(unquote_plus(name)):
        return f"{name}={MASK}"
    return pair
