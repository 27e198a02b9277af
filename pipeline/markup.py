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
WORD_JOINER = "\u2060"
"""An invisible character. Streamlit links bare URLs and e-mail addresses *after* parsing (on the
text itself, so a backslash does not stop it): one of these between 'http' and '://', 'www' and '.',
or before '@' breaks the pattern while the text looks the same."""
_WWW = re.compile(r"(?i)\b(www)\.")


def _break_autolinks(text: str) -> str:
    text = text.replace("://", WORD_JOINER + "://").replace("\\@", WORD_JOINER + "\\@")
    return _WWW.sub(lambda m: m.group(1) + WORD_JOINER + ".", text)


def md_escape(text: object) -> str:
    """`text` as Markdown that renders to exactly that text (no link, image, HTML or emphasis)."""
    return _break_autolinks(_SPECIAL.sub(r"\\\1", str(text)))


def safe_guidelines(text: str) -> str:
    """The guidelines' Markdown with formatting kept but every link, image, reference, raw HTML tag
    and autolink shown as the literal text it was written as."""
    return _break_autolinks(_LINK_ONLY.sub(r"\\\1", text))
