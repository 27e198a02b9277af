"""Service behind the reviewing guidelines: the team's Markdown text (a file in the data folder) or
the built-in default."""
from __future__ import annotations

from pathlib import Path

from pipeline.identity import Actor, Role, require
from pipeline.settings import Settings

DEFAULT_GUIDELINES = """\
**A good caption** names the object of the image's class (or a synonym: *jet*, *puppy*,
*lorry*), says one or two things that are visibly true (colour, pose, background), and is one
or two plain sentences.

- **Approve** when the draft is right as written.
- **Edit and approve** when a few words are wrong: fix them, check the diff, save.
- **Reject** when it would take a rewrite; pick the reason that fits best.
- **Skip** when you are unsure; skipped items come back after the pending ones.

Do not guess at what 32×32 pixels cannot show (breeds, brands, text, emotions).
"""
GUIDELINES_FILE_NAME = "guidelines.md"


def guidelines_path(settings: Settings) -> Path:
    return Path(settings.guidelines_file or Path(settings.data_dir) / GUIDELINES_FILE_NAME)


def read_guidelines(settings: Settings) -> str:
    """The team's guidelines (the settings' file when it exists), else the built-in text."""
    path = guidelines_path(settings)
    return path.read_text(encoding="utf-8") if path.is_file() else DEFAULT_GUIDELINES


def write_guidelines(settings: Settings, *, actor: Actor, text: str) -> Path:
    require(actor, Role.curator, "edit the guidelines")
    path = guidelines_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
