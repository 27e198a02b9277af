"""Copy a whole store into an empty database (e.g. a laptop's SQLite store onto a team's PostgreSQL).

Every table the migrations create is copied, in foreign-key order, in one transaction on the
destination; the tables come from the destination's schema after `alembic upgrade head`, so a
table added later (users, ...) is copied without changes here. Afterwards PostgreSQL's id
sequences are moved past the copied ids, and every table's row count is checked.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import MetaData, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

import db.models  # noqa: F401  (registers the tables: their types read and write the values)
from db.engine import make_engine, upgrade_to_head
from db.errors import InvalidActionError

BATCH_ROWS = 500
SKIP_TABLES = {"alembic_version"}
DERIVED_TABLES = {"review_tally"}
"""Not copied: the destination's triggers rebuild them from the rows copied (copying too would count twice)."""


class NotEmptyError(InvalidActionError):
    """The destination database already holds rows."""


@dataclass(frozen=True)
class TableCount:
    table: str
    source: int
    copied: int


def _count(conn, table) -> int:
    return conn.execute(select(func.count()).select_from(table)).scalar_one()


def rows_in(engine: Engine) -> dict[str, int]:
    """Rows per table (alembic's bookkeeping left out) of whatever tables the database has."""
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return {t.name: _count(conn, t) for t in meta.sorted_tables if t.name not in SKIP_TABLES}


def copy_store(source_url: str, dest_url: str, *, batch_rows: int = BATCH_ROWS,
               progress: Callable[[str, int], None] | None = None) -> list[TableCount]:
    """Copy every row of the store at `source_url` into the EMPTY database at `dest_url`.

    Both are first brought to the newest schema. Refused (NotEmptyError) when the destination
    has any row; on any error nothing is left in the destination (one transaction). Returns the
    row count of each table in the source and in the destination after the copy.
    """
    dest = make_engine(dest_url)
    try:
        full = {name: n for name, n in rows_in(dest).items() if n}
        if full:
            listed = ", ".join(f"{name} ({n} rows)" for name, n in sorted(full.items()))
            raise NotEmptyError(f"The destination database is not empty: {listed}. Copy into a new, "
                                "empty database.")
        upgrade_to_head(source_url)
        upgrade_to_head(dest_url)
        src = make_engine(source_url)
        try:
            return _copy(src, dest, batch_rows=batch_rows, progress=progress)
        finally:
            src.dispose()
    finally:
        dest.dispose()


def _tables(src: Engine, dest: Engine) -> list:
    """The destination's tables in dependency order, as the models declare them where they do."""
    reflected = MetaData()
    reflected.reflect(dest)
    tables = [SQLModel.metadata.tables.get(t.name, t) for t in reflected.sorted_tables
              if t.name not in SKIP_TABLES | DERIVED_TABLES]
    extra = set(inspect(src).get_table_names()) - SKIP_TABLES - DERIVED_TABLES - {t.name for t in tables}
    if extra:
        raise InvalidActionError(f"The source has tables the destination's schema lacks: {sorted(extra)}.")
    return tables


def _copy(src: Engine, dest: Engine, *, batch_rows: int, progress) -> list[TableCount]:
    tables = _tables(src, dest)
    counts = []
    with src.connect() as read, dest.begin() as write:
        for table in tables:
            n_source = _count(read, table)
            order = list(table.primary_key.columns) or list(table.columns)
            result = read.execution_options(yield_per=batch_rows).execute(select(table).order_by(*order))
            done = 0
            for batch in result.mappings().partitions(batch_rows):
                write.execute(table.insert(), [dict(row) for row in batch])
                done += len(batch)
                if progress is not None:
                    progress(table.name, done)
            copied = _count(write, table)
            if copied != n_source:
                raise RuntimeError(f"Table {table.name}: {n_source} rows in the source, {copied} copied.")
            counts.append(TableCount(table.name, n_source, copied))
        if dest.dialect.name == "postgresql":
            _advance_sequences(write, tables)
    return counts


def _advance_sequences(conn, tables) -> None:
    """Rows were copied with their ids: move each id sequence past the largest id copied."""
    quote = conn.dialect.identifier_preparer.quote
    for table in tables:
        for column in table.primary_key.columns:
            seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                               {"t": quote(table.name), "c": column.name}).scalar()
            if seq is None:
                continue
            conn.execute(
                text(f"SELECT setval(:seq, COALESCE((SELECT MAX({quote(column.name)}) FROM {quote(table.name)}), 1), "
                     f"(SELECT MAX({quote(column.name)}) FROM {quote(table.name)}) IS NOT NULL)"),
                {"seq": seq},
            )
