"""Database URLs: one password-hiding rule (shared/passwords.py) behind every place that shows a URL,
and store/url.py under both db.py and guard.py, so the store's modules import no circle."""
from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from migrator.errors import DatabaseUnavailable
from migrator.shared.passwords import hide_password, hide_password_in, url_password
from migrator.store.url import parse_url, safe_url, sqlite_path
from test_layers import import_edges, package_sources


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://fleet:s3cret@db.example/migrator", "postgresql+psycopg://fleet:***@db.example/migrator"),
    ("postgresql://u:secret@h:notaport/x", "postgresql://u:***@h:notaport/x"),  # does not parse
    ("postgresql://u:p@ss@h:notaport/x", "postgresql://u:***@h:notaport/x"),  # an @ in the password
    ("postgresql://u@h/x", "postgresql://u@h/x"),
    ("sqlite:////var/lib/m.db", "sqlite:////var/lib/m.db"),
    ("migrator.db", "migrator.db"),
])
def test_one_rule_hides_the_password(url, shown):
    assert hide_password(url) == shown == safe_url(url)


def test_url_objects_and_messages():
    u = make_url("postgresql://u:hunter2@h/x")
    assert hide_password(u) == safe_url(u) == "postgresql://u:***@h/x"
    assert url_password(u) == url_password("postgresql://u:hunter2@h/x") == "hunter2"
    assert url_password("postgresql://u:hunter2@h:bad/x") == "hunter2"
    assert url_password("postgresql://u@h/x") is None and url_password("m.db") is None
    assert hide_password_in("auth failed for hunter2", u) == "auth failed for ***"
    assert hide_password_in("nothing to hide", "postgresql://u@h/x") == "nothing to hide"


def test_an_unparsable_url_is_reported_without_its_password():
    with pytest.raises(DatabaseUnavailable) as exc:
        parse_url("postgresql://u:topsecret@h:notaport/x")
    assert "topsecret" not in str(exc.value) and exc.value.url == "postgresql://u:***@h:notaport/x"


def test_sqlite_path():
    assert str(sqlite_path("sqlite:////var/lib/m.db")) == "/var/lib/m.db"
    assert sqlite_path("sqlite://") is None and sqlite_path("postgresql://h/x") is None


def test_store_modules_import_no_circle():
    edges = {(m, t) for m, t, _ in import_edges(package_sources()) if m.startswith("migrator.store.")
             and t.startswith("migrator.store.")}
    graph: dict[str, set[str]] = {}
    for m, t in edges:
        graph.setdefault(m, set()).add(t)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [m for m in graph if reaches(m, m, {m})] == []
    assert ("migrator.store.db", "migrator.store.url") in edges and ("migrator.store.guard", "migrator.store.url") in edges
