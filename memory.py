"""Conversation memory: which stored turns the model sees, counted with the real chat template.

The context holds `max_tokens` tokens; `memory_ratio` of them is reserved for the reply
and the rest (the budget) is prompt: the system prompt, as many of the newest turns as
fit, and the new message. Oldest whole turns go first. Nothing here touches storage:
trimming only decides what the model sees.

Turns are dropped in chunks so the kept prefix stays token-identical for many turns (a
KV cache can reuse it): once the history overflows, the oldest whole turns covering a
whole number of chunks (`chunk_ratio` of the budget) are left out, so the first kept
turn moves only after the history has grown by another chunk.
"""

import threading
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field


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

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompt, template included."""
        return len(self.prompt_ids)

    def as_dict(self) -> dict:
        """The gauge the page shows."""
        return {"used": self.prompt_tokens, "budget": self.budget, "dropped": self.dropped}


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

    def __init__(self, tokenizer, max_tokens: int = 8192, memory_ratio: float = 0.25,
                 chunk_ratio: float = 0.25, template_kwargs: dict | None = None):
        if not 0 <= memory_ratio < 1:
            raise ValueError("memory_ratio must be at least 0 and below 1")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.budget = int(max_tokens * (1 - memory_ratio))
        self.chunk = max(1, int(self.budget * chunk_ratio))
        self.template_kwargs = template_kwargs or {}
        self._turn_costs: OrderedDict[tuple, int] = OrderedDict()
        self._lock = threading.Lock()  # request threads plan at once; the cost cache is shared

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

    def _turn_cost(self, turn: list[dict]) -> int:
        """Tokens one turn adds to a prompt (cached: contents never change once stored)."""
        key = tuple((m["role"], m["content"]) for m in turn)
        cost = self._turn_costs.get(key)
        if cost is None:
            base = [{"role": "system", "content": "."}]
            cost = len(self.render(base + turn, False)) - len(self.render(base, False))
            self._turn_costs[key] = cost
            if len(self._turn_costs) > 20_000:
                self._turn_costs.popitem(last=False)
        else:
            self._turn_costs.move_to_end(key)
        return cost

    def plan(self, history: list[dict], new_message: str, system_prompt: str | None = None,
             partial_reply: str | None = None) -> MemoryPlan:
        """Choose the newest turns that fit beside the system prompt and the new message (and, to continue a
        reply that was cut off, the start of that reply)."""
        with self._lock:
            return self._plan(history, new_message, system_prompt, partial_reply)

    def _plan(self, history: list[dict], new_message: str, system_prompt: str | None,
              partial_reply: str | None = None) -> MemoryPlan:
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
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
            cumulative.append(cumulative[-1] + self._turn_cost(turn))
        stable = bisect_left(cumulative, self._tokens_to_drop(head, cumulative[-1]))
        # The new message may be long: drop more turns for this reply only, one at a time.
        for start in range(min(stable, len(turns)), len(turns) + 1):
            kept = [m for turn in turns[start:] for m in turn]
            text = self.render_text(head + kept + new, continuing)
            ids = self.encode(text)
            if len(ids) <= self.budget:
                first = sum(len(turn) for turn in turns[:start])
                return MemoryPlan(ids, self.budget, first, first, head + kept + new, text, continuing)
        return MemoryPlan(minimal, self.budget, len(history), len(history), head + new, minimal_text, continuing)

    def _tokens_to_drop(self, head: list[dict], history_tokens: int) -> int:
        """How many of the oldest history tokens to leave out: a whole number of chunks.

        Depends only on the system prompt and the stored history (not on the new message),
        so the first kept turn stays put until the history has grown by another chunk.
        Half a chunk is kept free for the new message.
        """
        fixed = len(self.render(head + [{"role": "user", "content": ""}]))
        overflow = fixed + history_tokens + self.chunk // 2 - self.budget
        return 0 if overflow <= 0 else -(-overflow // self.chunk) * self.chunk


class PlansReplies:
    """Prompt planning shared by ChatBot and RemoteBot; they set `memory`, `max_tokens` and `system_prompt`."""

    memory: Memory
    max_tokens: int
    system_prompt: str

    @property
    def reply_reserve(self) -> int:
        """Tokens kept free for the reply."""
        return self.max_tokens - self.memory.budget

    def plan(self, history: list[dict], message: str, system_prompt: str | None = None,
             partial_reply: str | None = None) -> MemoryPlan:
        """What the model would see for `message` after `history`, going on from `partial_reply` when given
        (raises MessageTooLong)."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return self.memory.plan(history, message, system, partial_reply)

    def reply_tokens(self, prompt_tokens: int, requested: int | None) -> int:
        """The most tokens a reply may have: as many as asked (else the reserve), as far as the context has room."""
        return max(1, min(requested or self.reply_reserve, self.max_tokens - prompt_tokens))
