"""A database URL's password, hidden wherever migrator shows or stores a URL: one rule for all.

The config snapshot (config/schema.py), the store's error messages (store/url.py, store/guard.py) and
every command that prints a database URL use these functions. They live in shared/ because the
config (the base layer) needs them and may not import the store (tests/test_layers.py).
SQLAlchemy is imported only when a URL is actually parsed.
"""
from __future__ import annotations

import re
from typing import Any

HIDDEN = "***"
# user:password@ in a URL that does not parse: the password runs to the last @ before the path
# (a password may hold @), else to the first @.
_PASSWORD = re.compile(r"(://[^:/@]*:)([^/]*|[^@]*)@")


def url_password(url: Any) -> str | None:
    """The password written in a database URL (a string or an SQLAlchemy URL), also when the URL
    does not parse; None when it has none."""
    if not isinstance(url, str):
        return url.password
    if "://" not in url:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # unparsable (ArgumentError, or ValueError for e.g. a non-numeric port)
        m = _PASSWORD.search(url)
        return m.group(2) if m else None


def hide_password(url: Any) -> str:
    """A database URL (a string, an SQLAlchemy URL or a plain path) fit to print or store: its
    password replaced by ***, even when the URL does not parse."""
    if not isinstance(url, str):
        return url.render_as_string(hide_password=True)
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        return u.render_as_string(hide_password=True) if u.password is not None else url
    except Exception:  # unparsable: hide anything between user: and @ by hand
        return _PASSWORD.sub(rf"\g<1>{HIDDEN}@", url)


def hide_password_in(text: str, url: Any) -> str:
    """`text` (a driver's or a parser's message about `url`) with the URL's password replaced by ***."""
    password = url_password(url)
    return text.replace(str(password), HIDDEN) if password else text
