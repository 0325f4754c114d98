"""Recall: which messages outside memory come back for one reply, ranked against the new message.

The candidates (a conversation's messages that fell out of the window, or the older
messages an API client sent) are already in memory when a prompt is planned, so they are
ranked in a throwaway in-process SQLite FTS5 index: word stems (Porter), prefix matches,
accents ignored, BM25 ranking. The same ranking serves the page and /v1 whatever database
the server keeps its conversations in. Words that say nothing about a topic ("what", "is",
"my") are left out of the query, so a question made only of them recalls nothing.
"""

import re
import sqlite3

MAX_CANDIDATES = 5000  # the newest messages outside memory that are ranked; older ones are not searched
SHARE_OF_BEST = 0.5  # a match scoring under this share of the best match's BM25 score is too weak to recall
MAX_QUERY_WORDS = 32
_INDEX = "CREATE VIRTUAL TABLE passages USING fts5(body, tokenize='porter unicode61 remove_diacritics 2')"
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself him
himself his how i if in into is it its itself just let me more most my myself no nor not now of off on once only or
other our ours ourselves out over own please same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves ok okay yes
hi hello thanks thank
""".split())


def query_words(text: str) -> list[str]:
    """The words of `text` worth searching for: no stopwords, no single letters, each once, at most MAX_QUERY_WORDS."""
    words: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        if len(word) > 1 and word not in STOPWORDS and word not in words:
            words.append(word)
    return words[:MAX_QUERY_WORDS]


def rank(candidates: list[str], query: str, limit: int, floor: float = SHARE_OF_BEST) -> list[int]:
    """Indexes into `candidates` of those sharing a word (stem or prefix) with `query` and scoring at least
    `floor` of the best one: best first (BM25), the newer first among equals; at most `limit`. The floor
    keeps a message that shares one common word ("name") from riding along with the one that answers."""
    words = query_words(query)
    offset = max(0, len(candidates) - MAX_CANDIDATES)
    if not words or limit <= 0 or len(candidates) == offset:
        return []
    match = " OR ".join(f'"{word}"*' for word in words)  # quoted: FTS5 syntax in a message is only ever text
    with sqlite3.connect(":memory:") as db:
        db.execute(_INDEX)
        db.executemany("INSERT INTO passages(rowid, body) VALUES (?, ?)",
                       ((index, candidates[index]) for index in range(offset, len(candidates))))
        rows = db.execute("SELECT rowid, bm25(passages) FROM passages WHERE passages MATCH ? "
                          "ORDER BY bm25(passages), rowid DESC LIMIT ?", (match, limit)).fetchall()
    if not rows:
        return []
    best = rows[0][1]  # FTS5's bm25() is negative: the lower, the better
    return [index for index, score in rows if score <= best * floor]


def found(words: list[str], text: str) -> set[str]:
    """Which of `words` occur in `text`, by stem or prefix (the same matching as `rank`)."""
    if not words:
        return set()
    with sqlite3.connect(":memory:") as db:
        db.execute(_INDEX)
        db.execute("INSERT INTO passages(rowid, body) VALUES (1, ?)", (text,))
        match = "SELECT 1 FROM passages WHERE passages MATCH ?"
        return {word for word in words if db.execute(match, (f'"{word}"*',)).fetchone()}
