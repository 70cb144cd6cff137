"""The dashboard's pages and assets, read from the package with `importlib.resources`.

Pages are small HTML shells: the data comes from JSON routes and is put into the page by the
scripts with `textContent`, never as markup. The few values a shell needs (the user's name,
the CSRF token, an error message) go through `render`, which escapes every one of them; there
is no way to insert raw markup.
"""

from __future__ import annotations

import functools
import html
import re
from importlib import resources

_PLACEHOLDER = re.compile(r"\{\{ *([a-z_]+) *\}\}")
_BODY = "<!-- page -->"
_ASSET = re.compile(r"[a-z0-9_-]+\.(js|css)")
CONTENT_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}


@functools.cache
def _read(folder: str, name: str) -> bytes:
    return resources.files(__name__).joinpath(folder, name).read_bytes()


def _fill(template: str, values: dict[str, str]) -> str:
    """`template` with every `{{name}}` replaced by the HTML-escaped value (KeyError when a
    value is missing: a page never shows a placeholder)."""
    return _PLACEHOLDER.sub(lambda m: html.escape(values[m.group(1)], quote=True), template)


def render(template: str, layout: str | None = "layout", **values: str) -> str:
    """The page `template` (inside `layout`, whose `<!-- page -->` it replaces), every value
    escaped. Both are trusted files of this package; only `values` come from outside."""
    body = _fill(_read("templates", f"{template}.html").decode(), values)
    if layout is None:
        return body
    # The layout is filled before the body goes in, so a value can never add a placeholder.
    return _fill(_read("templates", f"{layout}.html").decode(), values).replace(_BODY, body, 1)


def asset(name: str) -> tuple[bytes, str] | None:
    """A static file (script, style sheet, icon) and its content type; None for any other
    name, so that nothing else of the package can be read through the dashboard."""
    match = _ASSET.fullmatch(name)
    if match is None:
        return None
    try:
        return _read("static", name), CONTENT_TYPES[match.group(1)]
    except (FileNotFoundError, IsADirectoryError):
        return None
