"""Markdown to HTML for the chat page, sanitised so no HTML or script from anyone ever runs.

markdown-it-py renders CommonMark with raw HTML switched off (so `<script>` shows as
text) and rejects `javascript:` links; nh3 (the Ammonia sanitiser) then keeps only an
allow-list of tags and attributes, as a second wall. Math (`$…$`, `$$…$$`, `\\(…\\)` and
`\\[…\\]` on lines of their own) becomes the escaped text of `<span class="math">` or
`<div class="math">`, which the page lays out with KaTeX.
"""

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.texmath import texmath_plugin

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
}
# No style attributes: the page's CSP refuses inline styles (a table's column alignment is the one loss).
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}, "span": {"class"}, "div": {"class"}}


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    options = {"html": False, "linkify": False, "breaks": True}
    md = MarkdownIt("commonmark", options).enable("table").enable("strikethrough")
    # "$5 and $6" stays text: a dollar sign opens math only when no space follows it.
    return md.use(texmath_plugin, delimiters="brackets").use(dollarmath_plugin, allow_space=False,
                                                             allow_digits=False, double_inline=True)


def render_markdown(text: str) -> str:
    """Safe HTML for a message written in Markdown."""
    html = _markdown().render(text)
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow")
