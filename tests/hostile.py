"""Hostile strings for the injection tests: Markdown links and images, raw HTML and bare URLs that
would make a browser fetch or link to evil.example if any page rendered them as Markdown or HTML."""
from __future__ import annotations

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
