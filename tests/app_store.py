"""Helpers for the app tests: a real store filled with bundled CIFAR-10 images and drafts,
and an AppTest pointed at it (CAPSTUDIO_DATA_DIR) with the app's cached resources cleared."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import streamlit as st
from PIL import Image as PILImage
from streamlit.testing.v1 import AppTest

from db.catalog import add_draft, add_image
from db.engine import init_store, session_scope
from db.models import SourceKind
from db.users import add_user, get_user
from pipeline.data.images import pixel_hash, to_png
from pipeline.identity import AuthMode, Role
from pipeline.services.auth import HASHER

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "pipeline" / "assets" / "cifar10"
ENTRY = str(REPO / "curation_app" / "streamlit_app.py")
SESSION_KEY = "auth_session"  # curation_app/signin.py (tests never import curation_app)
COOKIE_SECRET = "test-cookie-secret-" + "0" * 32


def fill_store(data_dir: Path, *, per_class: int = 1, classes: tuple[str, ...] = ("cat", "dog", "ship"),
               drafts: dict[str, str] | None = None) -> dict[str, list[int]]:
    """Add `per_class` bundled images of each class with a teacher draft each; ids by class."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = init_store(f"sqlite:///{(data_dir / 'studio.db').resolve()}")
    ids: dict[str, list[int]] = {}
    with session_scope(engine) as s:
        for label in classes:
            for n in range(per_class):
                path = BUNDLED / label / f"{label}_{n:04d}.png"
                img = PILImage.open(path).convert("RGB")
                image, _ = add_image(s, source_kind=SourceKind.bundled, source_key=f"bundled:{label}/{path.name}",
                                     label=label, png=to_png(img), content_hash=pixel_hash(img),
                                     width=32, height=32)
                text = (drafts or {}).get(label, f"A small photo of a {label} outdoors.")
                flags = ["too_short"] if len(text.split()) < 4 else []
                add_draft(s, image_id=image.id, text=text, model_id="test-teacher", prompt="Describe it.",
                          generation_params={"max_new_tokens": 40}, flags=flags)
                ids.setdefault(label, []).append(image.id)
    engine.dispose()
    return ids


def app_for(data_dir: Path, monkeypatch, *, reviewer: str | None = "ann", role: Role | None = Role.admin,
            mode: AuthMode = AuthMode.password) -> AppTest:
    """An AppTest of the whole app on the store in `data_dir`. In password mode with a `reviewer`:
    that account exists with `role` and has signed in (what the sign-in form leaves behind); with
    no reviewer nobody has signed in yet. In local mode the OS user is the admin. The Review page shows its
    Streamlit-widget card (AppTest runs no JavaScript: the browser card is tested in Chromium)."""
    monkeypatch.setenv("CAPSTUDIO_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CAPSTUDIO_REVIEW_CARD", "streamlit")
    monkeypatch.setenv("CAPSTUDIO_AUTH_MODE", mode.value)
    monkeypatch.delenv("CAPSTUDIO_DATABASE_URL", raising=False)
    st.cache_resource.clear()
    at = AppTest.from_file(ENTRY, default_timeout=30)
    at.secrets["auth"] = {"cookie_secret": COOKIE_SECRET}
    if reviewer and mode == AuthMode.password:
        add_account(data_dir, reviewer, role)
        at.session_state[SESSION_KEY] = (reviewer, datetime.now(UTC).timestamp())
    return at


def add_account(data_dir: Path, name: str, role: Role | None, *, password: str | None = None) -> None:
    """An account in the store (kept as it is when it exists)."""
    engine = engine_for(data_dir)
    with session_scope(engine) as s:
        if get_user(s, name=name) is None:
            add_user(s, name=name, role=role.value if role else None,
                     password_hash=HASHER.hash(password) if password else None)
    engine.dispose()


def engine_for(data_dir: Path):
    return init_store(f"sqlite:///{(data_dir / 'studio.db').resolve()}")
