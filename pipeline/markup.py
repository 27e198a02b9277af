"""User and model text in Markdown contexts: `md_escape` makes any string (a reviewer name, a file
name, a caption, a job message) display literally where Streamlit renders Markdown (messages,
captions, widget labels), so it can never become a link, an image or HTML; `safe_guidelines` keeps the
team's guidelines formatted (emphasis, lists, headings) with links, images, raw HTML and autolinks
disabled.
"""
from __future__ import annotations

import re

# '[' opens every link, image, reference and Streamlit :colour[...] directive; '<' every tag and
# <autolink>; '@' e-mail autolinks; '$' math; the rest is emphasis and code (shown literally)
_SPECIAL = re.compile(r"([\\`*_~\[\]<>$@])")
_LINK_ONLY = re.compile(r"([\\\[\]<>@])")
# GFM links bare URLs (http://..., www....): a backslash before the ':' or the '.' prevents that
_AUTOLINK = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{1,31})(:)(?=//)|\b(www)(\.)")


def _break_autolinks(text: str) -> str:
    return _AUTOLINK.sub(lambda m: f"{m.group(1)}\\:" if m.group(1) else f"{m.group(3)}\\.", text)


def md_escape(text: object) -> str:
    """`text` as Markdown that renders to exactly that text (no link, image, HTML or emphasis)."""
    return _break_autolinks(_SPECIAL.sub(r"\\\1", str(text)))


def safe_guidelines(text: str) -> str:
    """The guidelines' Markdown with formatting kept but every link, image, reference, raw HTML tag
    and autolink shown as the literal text it was written as."""
    return _break_autolinks(_LINK_ONLY.sub(r"\\\1", text))
