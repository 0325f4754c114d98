"""A conversation as a tree of messages: each message names its parent, and the conversation names the leaf
it shows. Editing a message or regenerating a reply adds a sibling branch instead of overwriting, so every
earlier version stays stored and can be shown again.

Pure functions over a conversation's stored messages (dicts with `id` and `parent_id`); no database here.
"""


def children_of(messages: list[dict]) -> dict:
    """Parent id (None for the first messages) -> child ids, oldest first."""
    children: dict = {}
    for message in sorted(messages, key=lambda m: m["id"]):
        children.setdefault(message["parent_id"], []).append(message["id"])
    return children


def newest_leaf(messages: list[dict], start: int | None) -> int | None:
    """The end of the newest branch below `start` (the message itself when it has no children)."""
    children = children_of(messages)
    node = start
    while children.get(node):
        node = children[node][-1]
    return node


def path_to(messages: list[dict], leaf_id: int | None) -> list[dict]:
    """The messages from the first one down to `leaf_id`, in order (the branch the page shows)."""
    by_id = {m["id"]: m for m in messages}
    if leaf_id not in by_id:  # no leaf recorded (or it is gone): show the newest branch
        leaf_id = newest_leaf(messages, None)
    path = []
    while leaf_id is not None and leaf_id in by_id:
        path.append(by_id[leaf_id])
        leaf_id = by_id[leaf_id]["parent_id"]
    return path[::-1]


def sibling_ids(messages: list[dict], message: dict) -> list[int]:
    """The versions of a message: it and the other children of its parent, oldest first."""
    return children_of(messages).get(message["parent_id"], [message["id"]])
