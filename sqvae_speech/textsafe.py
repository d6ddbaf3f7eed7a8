"""Names (utterance ids, speakers, experiment and file names) written into Markdown,
figures and shell or Python snippets, shown as the text they are: never markup, never
code, never a line break.

HTML pages escape with :func:`html.escape` where they are written
(:mod:`sqvae_speech.synthesis.listening`, :mod:`sqvae_speech.metrics.page`); file names made
from names are checked where they are written (``convert``, ``export``, ``encode``).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# ASCII punctuation that Markdown (CommonMark / GFM) reads as markup inside a line:
# backslash escapes make it literal; < > & become entities (raw HTML, autolinks, entities)
_MD_PUNCT = re.compile(r"([\\`*\[\]|])")


def one_line(text: str) -> str:
    """``text`` with every control character (newlines, tabs, escapes) as a space."""
    return _CONTROL.sub(" ", text)


def md_text(text: str) -> str:
    """``text`` as literal Markdown text on one line: no link, image, code span, ``*``
    emphasis, table cell break, line break or raw HTML can come out of it. ``_`` is left
    alone (names hold it often; at most a ``_word_`` shows in italics)."""
    text = one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_PUNCT.sub(r"\\\1", text)


def md_code(text: str) -> str:
    """``text`` as one Markdown code span on one line, whatever backticks it holds (not
    for a table cell: a GFM cell ends at a ``|`` even inside a code span)."""
    text = one_line(text)
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def mpl_text(text: str) -> str:
    """``text`` for a matplotlib title or label, on one line: ``$`` escaped, so a name is
    never parsed as mathtext (``$\\x$`` in a name would otherwise fail the whole figure)."""
    return one_line(text).replace("$", r"\$")
