"""What a branch's attached documents put in the model's memory: each small document whole inside the message it
came with, and the passages of the large ones as candidates for each reply (see `model/attached.py`)."""

from webbot.model import attached
from webbot.web.errors import ApiError


def with_documents(store, bot, conversation_id: str, history: list[dict], chat: list[dict], new: list[str],
                   message: str, owner: str) -> tuple[list[dict], str, list]:
    """What a branch's documents put in memory: the chat-template history with each small document whole in its
    message, the new message likewise, and the candidate passages (`attached.Passage`) of the large ones and of
    the whole ones (which count only once their message has left the window). `history` is the stored branch
    (user and assistant messages, as `chat` lists them); `new`: the ids attached to the new message, each of
    which must be this owner's in this conversation (else a 404). `store`: the DocumentStore; `bot`: its memory
    says what fits. Needs no request (the gauge is counted after a reply's request has returned)."""
    history = [m for m in history if m["role"] in ("user", "assistant")]
    wanted = [i for m in history for i in m.get("documents") or []] + new
    if not wanted:
        return chat, message, []
    found = store.texts(conversation_id, wanted, owner)
    missing = [i for i in new if i not in found]
    if missing:
        raise ApiError(404, "A file attached to this message is not here any more; attach it again.",
                       "document_not_found")
    by_message = [[found[i] for i in m.get("documents") or [] if i in found] for m in history]
    return arrange(chat, message, by_message, [found[i] for i in new], bot.memory.budget)


def arrange(chat: list[dict], message: str, by_message: list[list[dict]], new: list[dict],
            budget: int) -> tuple[list[dict], str, list]:
    """`chat` with each message's small documents (`by_message[i]`: dicts with id, name, text, tokens and
    passages) whole in it, `message` likewise with `new`, and the candidate passages: those of the large
    documents, and of the whole ones in the history (used once their message has left the window)."""
    passages, chat = [], list(chat)

    def place(documents: list[dict], index: int | None, text: str) -> str:
        whole = []
        for document in documents:
            fits = attached.fits_whole(document["tokens"], budget)
            if fits:
                whole.append((document["name"], document["text"]))
                if index is None:  # whole in the new message itself
                    continue
            passages.extend(attached.Passage(document["id"], p["source"], p["text"], index if fits else None,
                                             index is None) for p in document["passages"])
        return attached.with_documents(text, whole)

    for index, documents in enumerate(by_message):
        if documents:
            chat[index] = {**chat[index], "content": place(documents, index, chat[index]["content"])}
    return chat, place(new, None, message), passages


def sources_of(plan, passages: list) -> list[dict]:
    """Where the passages in a plan come from, as a reply keeps them."""
    return [{"document": passages[i].document, "source": passages[i].source} for i in plan.sources]
