"""Process-wide resources for the app: the settings and the store's engine, built once, lazily."""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from sqlalchemy.engine import Engine

from db.engine import init_store
from pipeline.services.health import StoreDamage, startup_notes, store_damage
from pipeline.settings import Settings


@st.cache_resource(show_spinner=False)
def get_settings() -> Settings:
    """Settings from the environment (`CAPSTUDIO_*`) and `.env`; never mutated."""
    return Settings()


@st.cache_resource(show_spinner="Opening the store…")
def get_engine() -> Engine:
    """The engine of the migrated store (Alembic upgrade to head on first use)."""
    settings = get_settings()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # a first run starts with no folder
    return init_store(settings.resolved_database_url)


@st.cache_resource(show_spinner="Checking the store…")
def get_store_damage() -> StoreDamage | None:
    """SQLite's integrity check, once per server process (pages recheck after a failed query)."""
    return store_damage(get_settings())


@st.cache_resource(show_spinner=False)
def get_startup_notes() -> list[str]:
    """Snapshot folders an interrupted export left behind, registered or moved aside at start."""
    return startup_notes(get_settings(), get_engine())
