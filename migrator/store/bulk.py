"""One bulk insert for the hot write paths (an agent's windows, a controller round's verdicts).

SQLAlchemy's per-row parameter processing costs more than the insert itself at a thousand hosts a
round, so rows go to the driver as plain tuples: sqlite3's executemany on SQLite; on PostgreSQL
with psycopg ONE statement per batch that inserts from `unnest` of one array per column (psycopg
adapts each column list to an array in C), where psycopg's pipelined executemany sends and
acknowledges one statement per row (bench controller, 1,000 hosts x 10 rounds on the local
server: 31,000 statements and 1.1 s of client time in psycopg alone). A few rows (an agent's
window) go as one VALUES statement instead: see FEW_ROWS.
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session


def _quoted(cols: Sequence[str]) -> str:
    return ", ".join('"' + c + '"' for c in cols)


# Up to this many rows, PostgreSQL gets VALUES with one parameter per cell: psycopg adapts a list
# to an array in Python (28 columns: 28 arrays), which cost an idle agent's window write more than
# the statement itself; beyond it, one array per column stays cheaper than the parameters.
FEW_ROWS = 8
_ARRAY_TYPES: dict[tuple[str, tuple[str, ...]], list[str]] = {}


def _array_types(table: Table, cols: Sequence[str], dialect) -> list[str]:  # noqa: ANN001
    """The SQL array type of each column, as PostgreSQL spells its element type (compiled once per
    table and column list: an agent inserts the same columns every window)."""
    key = (table.name, tuple(cols))
    if key not in _ARRAY_TYPES:
        _ARRAY_TYPES[key] = [f"{table.c[c].type.compile(dialect=dialect)}[]" for c in cols]
    return _ARRAY_TYPES[key]


def insert_rows(session: Session, table: Table, rows: Sequence[dict], *, conflict: Sequence[str] = ()) -> int:
    """Insert `rows` (dicts with the same keys, the table's column names) into `table` in one
    statement per batch; with `conflict` (the columns of a unique constraint) a row that is already
    there is skipped. Returns how many rows were new."""
    if not rows:
        return 0
    cols = list(rows[0])
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name == "sqlite":
        verb = "INSERT OR IGNORE" if conflict else "INSERT"
        sql = f"INSERT{verb[6:]} INTO {table.name} ({_quoted(cols)}) VALUES ({', '.join('?' * len(cols))})"
        res = conn.exec_driver_sql(sql, [tuple(r[c] for c in cols) for r in rows])
        return res.rowcount if res.rowcount is not None and res.rowcount >= 0 else len(rows)
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        if len(rows) <= FEW_ROWS:  # an agent's window: plain parameters (psycopg dumps arrays in Python)
            row = f"({', '.join(['%s'] * len(cols))})"
            sql = f"INSERT INTO {table.name} ({_quoted(cols)}) VALUES {', '.join([row] * len(rows))}"
            params = tuple(r[c] for r in rows for c in cols)
        else:
            arrays = ", ".join(f"%b::{t}" for t in _array_types(table, cols, dialect))  # binary: no quoting
            sql = f"INSERT INTO {table.name} ({_quoted(cols)}) SELECT * FROM unnest({arrays})"
            params = tuple([r[c] for r in rows] for c in cols)
        if conflict:
            sql += f" ON CONFLICT ({_quoted(conflict)}) DO NOTHING"
        res = conn.exec_driver_sql(sql, params)  # one execution
        return res.rowcount if res.rowcount is not None and res.rowcount >= 0 else len(rows)
    # Other drivers: SQLAlchemy's executemany; its rowcount is not reliable there, so count.
    stmt = insert(table)
    if conflict and dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    count = select(func.count()).select_from(table)
    before = conn.scalar(count)
    conn.execute(stmt, list(rows))  # without ON CONFLICT support the unique constraint still protects
    return conn.scalar(count) - before
