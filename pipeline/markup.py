"""User and model text in Markdown contexts: `md_escape` makes any string (a reviewer name, a file
name, a caption, a job message) display literally where Streamlit renders Markdown (messages,
captions, widget labels), so it cannot become a link, an image or HTML; `safe_guidelines_html`
renders the team's guidelines (meant to be formatted) with images, links and raw HTML disabled.
"""
from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

# every character that can open a Markdown construct: links, images, emphasis, code, HTML, tables,
# math ($), autolinks (<...>, e-mail @), Streamlit's :colour[...] directives ([ ])
_SPECIAL = re.compile(r"([\\`*_\[\]()<>!#|~$@])")
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|file|data|javascript)(:)|\b(www)(\.)")

_GUIDELINES = MarkdownIt("commonmark", {"html": False, "linkify": False}).disable(
    ["image", "link", "autolink", "html_inline", "html_block", "reference"])


def md_escape(text: object) -> str:
    """`text` as Markdown that renders to exactly that text (no link, image, HTML or emphasis)."""
    escaped = _SPECIAL.sub(r"\\\1", str(text))
    # GFM turns bare URLs (http://..., www....) into links: a backslash before ':' or '.' breaks that
    return _AUTOLINK.sub(lambda m: f"{m.group(1)}\\:" if m.group(1) else f"{m.group(3)}\\.", escaped)


def safe_guidelines_html(text: str) -> str:
    """The guidelines' Markdown as HTML: emphasis, lists, headings and code kept; images, links,
    autolinks, reference definitions and raw HTML shown as the literal text they were written as."""
    rendered = _GUIDELINES.render(text)
    return rendered or f"<p>{html.escape(text)}</p>"
