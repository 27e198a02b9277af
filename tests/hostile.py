"""Hostile strings for the injection tests: Markdown links and images, raw HTML and bare URLs that
would make a browser fetch or link to evil.example if any page rendered them as Markdown or HTML."""
from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from db.engine import session_scope
from db.models import Draft, Image, Job, Review, ReviewEvent, SnapshotRecordRow, Student

EVIL = "evil.example"
HOSTILE = [
    f"[x](http://{EVIL}/a)",
    f"![i](http://{EVIL}/i.png)",
    f"<img src=http://{EVIL}/x>",
    f'<a href="http://{EVIL}/h">h</a>',
    f"<http://{EVIL}/auto>",
    f"see http://{EVIL}/bare and www.{EVIL}",
    f"[ref][1]\n\n[1]: http://{EVIL}/r",
    f"mail me@{EVIL}",
]
HOSTILE_NAME = f"[ann](http://{EVIL}/u) ![i](http://{EVIL}/n.png)"  # a reviewer (an OIDC user's name)
HOSTILE_LABEL = f"[c]({EVIL})"  # a class sub-folder name of a folder import
HOSTILE_FILE = f"![f]({EVIL}).png"  # an uploaded or imported file name


def store_fingerprint(engine: Engine, exports_dir: Path) -> tuple:
    """What a refused hostile input must leave alone: row counts, every review's state and caption,
    and every byte under exports/."""
    with session_scope(engine) as s:
        counts = tuple(s.exec(select(func.count()).select_from(m)).one()
                       for m in (Image, Draft, Review, ReviewEvent, Job, SnapshotRecordRow, Student))
        reviews = tuple(sorted((r.image_id, r.state.value, r.final_caption, r.version)
                               for r in s.exec(select(Review)).all()))
    files = tuple(sorted((p.relative_to(exports_dir).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                         for p in exports_dir.rglob("*") if p.is_file()))
    return counts, reviews, files
