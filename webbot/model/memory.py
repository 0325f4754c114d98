"""Conversation memory: which stored turns the model sees, counted with the real chat template.

The context holds `max_tokens` tokens; `reply_share` of them is reserved for the reply
and the rest (the budget) is prompt: the system prompt, as many of the newest turns as
fit, and the new message. Oldest whole turns go first. Nothing here touches storage:
trimming only decides what the model sees.

Turns are dropped in chunks so the kept prefix stays token-identical for many turns (a
KV cache can reuse it): once the history overflows, the oldest whole turns covering a
whole number of chunks (`chunk_ratio` of the budget) are left out, so the first kept
turn moves only after the history has grown by another chunk.

Three things reach back past the window. Pinned messages ride in the system message, ahead of
the history, within their own budget (`pin_share`), and so do the notes the model wrote of
turns once they left the window (WEBBOT_MEMORY_SUMMARY), within `note_share` (see `head.py`):
the prefix changes only when pins or notes do. Recall (see `recall.py`) ranks the messages
outside memory against the new message and puts the best few into the new message's turn,
right before its text, within `recall_share` of the budget (`recall_block` says in what
words): the history before it, and so its cached keys and values, stays as it was. Once anything falls out of the
window, `recall_share` more is left out, so recall has room without moving the window
from turn to turn.

Attached documents (see `attached.py`) come in the same way: a small one rides whole in its
message; passages of a large one (or of a whole one outside the window) that match the
question go into the new message's turn, ahead of any recalled messages, within the document
budget, which is left free the same way in a conversation with documents.
"""

import hashlib
import re
import threading
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from webbot.config import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_RECALL_SHARE,
    DEFAULT_REPLY_SHARE,
    NOTE_SHARE,
    PIN_SHARE,
    RECALL_MOST,
)
from webbot.model import attached
from webbot.model import recall as recall_ranking
from webbot.model.head import one_line, system_message

TURN_COST_ENTRIES = 50_000  # turns whose token cost is remembered; each key is a 20-byte digest, never the text
_SURROGATES = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with unpaired UTF-16 surrogates (which no tokenizer can encode) replaced by U+FFFD.

    Requests with them are refused before they get here; this keeps text stored by older
    versions (a system prompt saved in settings, say) from breaking every later prompt.
    """
    return _SURROGATES.sub("\ufffd", text)


def prompt_budget(max_tokens: int, reply_share: float) -> int:
    """Tokens a prompt may hold: the context less the reply's share."""
    return int(max_tokens * (1 - reply_share))


class MessageTooLong(ValueError):
    """The new message alone does not fit in the prompt budget."""

    def __init__(self, tokens: int, limit: int):
        self.tokens, self.limit = tokens, limit
        super().__init__(f"your message is {tokens} tokens; the limit is {limit}")

    def sentence(self) -> str:
        """The message as the start of a sentence."""
        text = str(self)
        return text[0].upper() + text[1:]


@dataclass
class MemoryPlan:
    """What the model will see for one reply, and how much of the history that is."""

    prompt_ids: list[int]
    budget: int
    first_kept: int  # index into the history of the first message the model sees
    dropped: int  # stored messages left outside memory
    kept_messages: list[dict] = field(repr=False, default_factory=list)
    prompt_text: str = field(repr=False, default="")  # the prompt as the template wrote it; ids are its tokens
    continuing: bool = False  # the prompt ends inside an assistant reply that the model goes on writing
    public_tokens: int = 0  # leading tokens that hold nothing private: the template and the server's system prompt
    recalled: list[int] = field(default_factory=list)  # history indexes of the messages recalled for this reply
    pinned: list[int] = field(default_factory=list)  # history indexes of the pinned messages in the prompt
    sources: list[int] = field(default_factory=list)  # indexes into the candidate passages that are in the prompt
    noted: list[int] = field(default_factory=list)  # history indexes of the messages whose notes are in the prompt
    unnoted: int = 0  # messages outside memory after the last one with a note: what notes would cover next

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompt, template included."""
        return len(self.prompt_ids)

    def as_dict(self) -> dict:
        """The gauge the page shows."""
        return {"used": self.prompt_tokens, "budget": self.budget, "dropped": self.dropped,
                "recalled": len(self.recalled), "pinned": len(self.pinned), "passages": len(self.sources),
                "notes": len(self.noted), "unnoted": self.unnoted}


def recall_block(messages: list[dict]) -> str:
    """Recalled messages as the person's own words at the start of their new message. Of the forms tried with
    SmolLM2-135M (a heading and "I said:" lines, "Me:"/"You:" lines, "Remember what I said earlier"), this one
    answered most of the planted facts (4 of 5, against 2-3; bench/recall_forms.py)."""
    return "\n".join(f'Earlier I told you: "{one_line(m)}"' if m["role"] == "user"
                     else f'Earlier you said: "{one_line(m)}"' for m in messages)


def group_turns(history: list[dict]) -> list[list[dict]]:
    """Split messages into turns; each user message starts a new one."""
    turns: list[list[dict]] = []
    for message in history:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


class Memory:
    """Builds prompts with the tokenizer's chat template and trims them to the budget."""

    def __init__(self, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS, reply_share: float = DEFAULT_REPLY_SHARE,
                 chunk_ratio: float = 0.25, template_kwargs: dict | None = None,
                 recall_share: float = DEFAULT_RECALL_SHARE, pin_share: float = PIN_SHARE,
                 note_share: float = NOTE_SHARE):
        if not 0 <= reply_share < 1:
            raise ValueError("the reply's share of the context (WEBBOT_MEMORY_RATIO) must be at least 0 and below 1")
        if not 0 <= recall_share < 0.5:
            raise ValueError("the recall share of the prompt (WEBBOT_RECALL_SHARE) must be at least 0 and below 0.5")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.budget = prompt_budget(max_tokens, reply_share)
        self.chunk = max(1, int(self.budget * chunk_ratio))
        self.recall_budget = int(self.budget * recall_share)
        self.pin_budget = int(self.budget * pin_share)
        self.note_budget = int(self.budget * note_share)
        self.document_budget = int(self.budget * attached.DOCUMENT_SHARE)
        self.template_kwargs = template_kwargs or {}
        self._turn_costs: OrderedDict[bytes, int] = OrderedDict()
        self._base_cost: int | None = None
        self._lock = threading.Lock()  # guards the cost cache only: tokenising runs outside it, in parallel

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of messages rendered with the model's own chat template."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True,
            return_dict=False, **self.template_kwargs)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def render_text(self, messages: list[dict], continuing: bool = False) -> str:
        """The prompt for messages as text, rendered with the model's own chat template; `continuing` leaves
        the last (assistant) message open for the model to go on."""
        ending = {"continue_final_message": True} if continuing else {"add_generation_prompt": True}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **ending, **self.template_kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of template text (its special tokens are parsed, none are added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of ids as the template writes it, special tokens included."""
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _turn_cost(self, turn: list[dict], owner: str) -> int:
        """Tokens one turn adds to a prompt (cached: contents never change once stored).

        The cache is keyed by a digest of the owner and the turn, so it holds no text, its
        size in bytes is bounded by TURN_COST_ENTRIES, and how fast one person's prompt is
        planned never depends on what another sent. The tokenising runs outside the lock.
        """
        digest = hashlib.blake2b(repr((owner, [(m["role"], m["content"]) for m in turn])).encode("utf-8", "replace"),
                                 digest_size=20).digest()
        with self._lock:
            cost = self._turn_costs.get(digest)
            if cost is not None:
                self._turn_costs.move_to_end(digest)
                return cost
        base = [{"role": "system", "content": "."}]
        if self._base_cost is None:
            self._base_cost = len(self.render(base, False))
        cost = len(self.render(base + turn, False)) - self._base_cost
        with self._lock:
            self._turn_costs[digest] = cost
            while len(self._turn_costs) > TURN_COST_ENTRIES:
                self._turn_costs.popitem(last=False)
        return cost

    def plan(self, history: list[dict], new_message: str, system_prompt: str | None = None,
             partial_reply: str | None = None, public_head: bool = False, owner: str = "",
             pins: list[int] = (), recall: bool = False, passages: list = (),
             question: str | None = None, notes: dict[int, str] | None = None) -> MemoryPlan:
        """Choose the newest turns that fit beside the system prompt and the new message (and, to continue a
        reply that was cut off, the start of that reply).

        `public_head`: the system prompt is the server's own, so the prompt's head (template
        and system prompt) holds nothing private and any owner's cache may supply it.
        `pins`: indexes of pinned history messages, kept ahead of the window within the pin budget.
        `recall`: bring back the messages outside memory that best match the new message.
        `passages`: `attached.Passage`s of the conversation's documents, ranked against `question` (the
        person's own words; the new message when None).
        `notes`: history index -> the note kept on that message (of the messages up to it since the previous
        note); those of messages outside memory ride in the system message within the note budget.
        """
        history = [{**m, "content": valid_text(m["content"])} for m in history]
        new_message = valid_text(new_message)
        system_prompt = valid_text(system_prompt) if system_prompt else system_prompt
        partial_reply = valid_text(partial_reply) if partial_reply is not None else None
        notes = {i: valid_text(text) for i, text in (notes or {}).items() if 0 <= i < len(history)}
        plan = self._plan(history, new_message, system_prompt, partial_reply, owner, list(pins), recall,
                          bool(passages), notes)
        if any(i >= plan.first_kept for i in plan.noted):  # notes of messages the window holds: leave them out
            notes = {i: text for i, text in notes.items() if i < plan.first_kept}
            plan = self._plan(history, new_message, system_prompt, partial_reply, owner, list(pins), recall,
                              bool(passages), notes)
        plan.unnoted = plan.first_kept - 1 - max((i for i in notes if i < plan.first_kept), default=-1)
        if passages:
            plan = self._documents(plan, list(passages), valid_text(question or new_message)) or plan
        if public_head and system_prompt and not plan.pinned and not plan.noted:
            plan.public_tokens = self._public_tokens(system_prompt, plan)
        return plan

    def _public_tokens(self, system_prompt: str, plan: MemoryPlan) -> int:
        """How many leading tokens of the plan's prompt are the rendered system message and nothing else."""
        ending = {"add_generation_prompt": False}
        head_text = self.tokenizer.apply_chat_template([{"role": "system", "content": system_prompt}],
                                                       tokenize=False, **ending, **self.template_kwargs)
        if not plan.prompt_text.startswith(head_text):
            return 0
        head = self.encode(head_text)
        return len(head) if plan.prompt_ids[:len(head)] == head else 0

    def _head(self, system_prompt: str | None, history: list[dict], pins: list[int],
              notes: dict[int, str]) -> tuple[list[dict], list[int], list[int]]:
        """The system message with the pins and notes that fit their budgets, and which those are."""
        return system_message(system_prompt, history, pins, notes, self.pin_budget, self.note_budget,
                              lambda text: len(self.encode(text)))

    def _plan(self, history: list[dict], new_message: str, system_prompt: str | None,
              partial_reply: str | None, owner: str, pins: list[int], recall: bool,
              documents: bool = False, notes: dict[int, str] | None = None) -> MemoryPlan:
        head, pinned, noted = self._head(system_prompt, history, pins, notes or {})
        new = [{"role": "user", "content": new_message}]
        continuing = partial_reply is not None
        if continuing:
            new.append({"role": "assistant", "content": partial_reply})
        minimal_text = self.render_text(head + new, continuing)
        minimal = self.encode(minimal_text)
        if len(minimal) > self.budget:
            own = len(minimal) - len(self.render(head + [{"role": "user", "content": ""}]))
            raise MessageTooLong(own, self.budget - (len(minimal) - own))

        turns = group_turns(history)
        cumulative = [0]
        for turn in turns:
            cumulative.append(cumulative[-1] + self._turn_cost(turn, owner))
        reserve = (self.recall_budget if recall else 0) + (self.document_budget if documents else 0)
        stable = bisect_left(cumulative, self._tokens_to_drop(head, cumulative[-1], reserve))
        # The new message may be long: drop more turns for this reply only. The turn costs say where the
        # kept turns first fit beside it; the loop checks that with the real tokens and goes on if not.
        room = self.budget - len(minimal)
        fits = bisect_left(cumulative, cumulative[-1] - room)
        plan = None
        for start in range(min(max(stable, fits - 1), len(turns)), len(turns) + 1):
            kept = [m for turn in turns[start:] for m in turn]
            text = self.render_text(head + kept + new, continuing)
            ids = self.encode(text)
            if len(ids) <= self.budget:
                first = sum(len(turn) for turn in turns[:start])
                plan = MemoryPlan(ids, self.budget, first, first, head + kept + new, text, continuing, pinned=pinned,
                                  noted=noted)
                break
        if plan is None:
            kept = []
            plan = MemoryPlan(minimal, self.budget, len(history), len(history), head + new, minimal_text, continuing,
                              pinned=pinned, noted=noted)
        if recall and plan.first_kept:
            return self._recall(plan, history) or plan
        return plan

    def _recall(self, plan: MemoryPlan, history: list[dict]) -> MemoryPlan | None:
        """`plan` with the messages outside memory that best match the new message put back into its turn (as
        many of the best RECALL_MOST as fit the recall budget and the prompt budget); None when none does.
        A pinned message is a candidate too: small models use a fact next to the question far better than one
        in the system message (bench/recall_forms.py: SmolLM2-135M answered 1 of 5 from pins alone)."""
        turn = plan.kept_messages[-2 if plan.continuing else -1]["content"]
        order = recall_ranking.rank([m["content"] for m in history[:plan.first_kept]], turn, RECALL_MOST)
        return self._put_ahead(plan, order, self.recall_budget, "recalled", 1,
                               lambda chosen: recall_block([history[index] for index in chosen]))

    def _documents(self, plan: MemoryPlan, passages: list, question: str) -> MemoryPlan | None:
        """`plan` with the passages that best match `question` put at the start of the new message's turn (as
        many of the best PASSAGES_MOST as fit the document budget and the prompt budget); with no match, the
        opening passages of a document that came with this message. None when none fits."""
        usable = [i for i, p in enumerate(passages) if p.in_history is None or p.in_history < plan.first_kept]
        order = [usable[i] for i in recall_ranking.rank([passages[i].text for i in usable], question,
                                                        attached.PASSAGES_MOST, floor=0)]
        if not order:
            order = [i for i in usable if passages[i].fresh][:attached.PASSAGES_MOST]
        return self._put_ahead(plan, order, self.document_budget, "sources", 2,
                               lambda chosen: attached.passage_block([passages[index] for index in chosen]))

    def _put_ahead(self, plan: MemoryPlan, order: list[int], share: int, field_name: str, separator: int,
                   block_of) -> MemoryPlan | None:
        """`plan` with `block_of(chosen)` at the start of the new message's turn: `chosen` are as many of `order`
        (best first) as fit `share` and the room left in the prompt, in their own order, the last left out until
        the real prompt fits the budget; the plan's `field_name` lists them. None when none fits. `separator`:
        the tokens between two entries of a block."""
        allowance = min(share, self.budget - plan.prompt_tokens)
        chosen, spent = [], 2  # the blank line between the block and the message
        for index in order:
            cost = len(self.encode(block_of([index]))) + separator
            if spent + cost <= allowance:
                chosen.append(index)
                spent += cost
        chosen.sort()
        turns = plan.kept_messages
        at = len(turns) - (2 if plan.continuing else 1)
        while chosen:
            messages = [*turns[:at], {"role": "user", "content": f"{block_of(chosen)}\n\n{turns[at]['content']}"},
                        *turns[at + 1:]]
            text = self.render_text(messages, plan.continuing)
            ids = self.encode(text)
            if len(ids) <= self.budget:
                return replace(plan, prompt_ids=ids, kept_messages=messages, prompt_text=text,
                               **{field_name: chosen})
            chosen.pop()
        return None

    def _tokens_to_drop(self, head: list[dict], history_tokens: int, reserve: int = 0) -> int:
        """How many of the oldest history tokens to leave out: a whole number of chunks.

        Depends only on the system prompt and the stored history (not on the new message),
        so the first kept turn stays put until the history has grown by another chunk.
        Half a chunk is kept free for the new message, and once anything is left out,
        `reserve` more (the recall budget).
        """
        fixed = len(self.render(head + [{"role": "user", "content": ""}]))
        overflow = fixed + history_tokens + self.chunk // 2 - self.budget
        return 0 if overflow <= 0 else -(-(overflow + reserve) // self.chunk) * self.chunk
