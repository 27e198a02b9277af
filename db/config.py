"""Where the store lives: the part of the settings the database layer needs.

Environment variables use the prefix `CAPSTUDIO_` (e.g. `CAPSTUDIO_DATABASE_URL`).
`pipeline.settings.Settings` extends this class with everything else.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CAPSTUDIO_"


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    """Folder for the SQLite database, exports, students and job logs."""
    database_url: str | None = None
    """SQLAlchemy URL; default: sqlite:///<data_dir>/studio.db"""

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, value: str | None) -> str | None:
        """Refuse a URL SQLAlchemy cannot parse at once, not at the first query."""
        if not value:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL; use sqlite:////path/to/studio.db or "
                             "postgresql+psycopg://user:password@host/dbname, or unset it for the default") from None
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'studio.db').resolve()}"

    @property
    def display_database_url(self) -> str:
        """The store's URL for showing on screen: a server password is masked."""
        from sqlalchemy.engine import make_url

        return make_url(self.resolved_database_url).render_as_string(hide_password=True)
