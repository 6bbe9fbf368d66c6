"""Text from models and paths, made safe for the terminal.

Node names, file names and model names reach rich tables and lines; rich would read
``[bold]`` in them as markup, and a control character would drive the terminal. ``plain``
wraps such text in a ``rich.text.Text`` (never parsed as markup) with control characters
shown escaped (``\\x1b``), and ``markup_safe`` does the same for text spliced into a markup
string.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: object) -> str:
    """``str(text)`` with control characters written as escapes (tab and newline kept)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def plain(text: object, style: str = "") -> Text:
    """A table cell or line fragment that prints exactly ``text`` (no markup)."""
    return Text(visible(text), style=style)


def markup_safe(text: object) -> str:
    """``text`` for splicing into a rich markup string."""
    return escape(visible(text))
