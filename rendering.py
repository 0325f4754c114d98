"""Markdown to HTML for the chat page, sanitised so no HTML or script from anyone ever runs.

markdown-it-py renders CommonMark with raw HTML switched off (so `<script>` shows as
text) and rejects `javascript:` links; nh3 (the Ammonia sanitiser) then keeps only an
allow-list of tags and attributes, as a second wall.
"""

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    options = {"html": False, "linkify": False, "breaks": True}
    return MarkdownIt("commonmark", options).enable("table").enable("strikethrough")


def render_markdown(text: str) -> str:
    """Safe HTML for a message written in Markdown."""
    html = _markdown().render(text)
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow")
