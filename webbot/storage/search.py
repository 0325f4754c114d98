"""Full-text search over a person's conversation titles and message text.

SQLite uses the FTS5 indexes that migration 0003 keeps in step with the tables (words
match by prefix, accents ignored); PostgreSQL uses its own text search on the fly. Either
way the snippet marks each hit between MARK_START and MARK_END, which the page turns into
<mark> elements with textContent, so nothing in a message can become markup.
"""

import re

from sqlalchemy import text

MARK_START, MARK_END = "\x02", "\x03"
MAX_TERMS = 8


def terms(query: str) -> list[str]:
    """The words of a query (letters and digits only, at most MAX_TERMS)."""
    return re.findall(r"\w+", query.lower())[:MAX_TERMS]


def find(db, owner: str, query: str, limit: int) -> list[dict]:
    """Conversations matching every word of `query` in their title or one message: newest hit first,
    one result per conversation, each with `conversation_id`, `title`, `message_id` (None for a title hit)
    and `snippet`."""
    words = terms(query)
    if not words:
        return []
    rows = _sqlite(db, owner, words, limit) if db.dialect.name == "sqlite" else _postgresql(db, owner, words, limit)
    results, seen = [], set()
    for row in rows:
        if row["conversation_id"] not in seen:
            seen.add(row["conversation_id"])
            results.append(dict(row))
    return results[:limit]


def _sqlite(db, owner: str, words: list[str], limit: int):
    match = " ".join(f'"{word}"*' for word in words)  # quoted: FTS5 syntax in a query is only ever text
    mark = {"match": match, "owner": owner, "limit": limit * 4, "start": MARK_START, "end": MARK_END}
    titles = db.execute(text(
        "SELECT c.id AS conversation_id, c.title, NULL AS message_id, "
        "highlight(titles_fts, 0, :start, :end) AS snippet "
        "FROM titles_fts JOIN conversations c ON c.rowid = titles_fts.rowid "
        "WHERE titles_fts MATCH :match AND c.owner = :owner AND c.deleted_at IS NULL "
        "ORDER BY c.updated_at DESC LIMIT :limit"), mark).mappings().all()
    bodies = db.execute(text(
        "SELECT c.id AS conversation_id, c.title, m.id AS message_id, "
        "snippet(messages_fts, 0, :start, :end, '…', 12) AS snippet "
        "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
        "JOIN conversations c ON c.id = m.conversation_id "
        "WHERE messages_fts MATCH :match AND c.owner = :owner AND c.deleted_at IS NULL "
        "ORDER BY m.created_at DESC LIMIT :limit"), mark).mappings().all()
    return [*titles, *bodies]


def _postgresql(db, owner: str, words: list[str], limit: int):
    tsquery = " & ".join(f"{word}:*" for word in words)
    options = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=24, MinWords=8"
    values = {"query": tsquery, "owner": owner, "limit": limit * 4, "options": options}
    titles = db.execute(text(
        "SELECT c.id AS conversation_id, c.title, NULL AS message_id, "
        "ts_headline('simple', c.title, to_tsquery('simple', :query), :options) AS snippet "
        "FROM conversations c WHERE to_tsvector('simple', c.title) @@ to_tsquery('simple', :query) "
        "AND c.owner = :owner AND c.deleted_at IS NULL ORDER BY c.updated_at DESC LIMIT :limit"),
        values).mappings().all()
    bodies = db.execute(text(
        "SELECT c.id AS conversation_id, c.title, m.id AS message_id, "
        "ts_headline('simple', m.content, to_tsquery('simple', :query), :options) AS snippet "
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE to_tsvector('simple', m.content) @@ to_tsquery('simple', :query) "
        "AND c.owner = :owner AND c.deleted_at IS NULL ORDER BY m.created_at DESC LIMIT :limit"),
        values).mappings().all()
    return [*titles, *bodies]
