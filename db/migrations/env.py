"""Alembic environment: the URL comes from the caller's config or the store settings."""
from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

import db.models  # noqa: F401  (registers the tables)
from db.config import StoreSettings

config = context.config
url = config.get_main_option("sqlalchemy.url") or StoreSettings().resolved_database_url
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    batch = url.startswith("sqlite")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=batch)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # batch mode (copy-and-move tables) only where ALTER TABLE is limited: SQLite
        batch = connection.dialect.name == "sqlite"
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=batch)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
