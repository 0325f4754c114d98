"""Conversation memory: which stored turns the model sees, counted with the real chat template.

The context holds `max_tokens` tokens; `memory_ratio` of them is reserved for the reply
and the rest (the budget) is prompt: the system prompt, as many of the newest turns as
fit, and the new message. Oldest whole turns go first. Nothing here touches storage:
trimming only decides what the model sees.

Turns are dropped in chunks so the kept prefix stays byte-identical for many turns (a
later KV cache can reuse it). The history is cut into blocks of about `chunk_ratio` of
the budget at fixed places, decided only by the turns before them; the first kept turn
is always a block start, so it moves only when a whole block has to go.
"""

from collections import OrderedDict
from dataclasses import dataclass, field


class MessageTooLong(ValueError):
    """The new message alone does not fit in the prompt budget."""

    def __init__(self, tokens: int, limit: int):
        self.tokens, self.limit = tokens, limit
        super().__init__(f"your message is {tokens} tokens; the limit is {limit}")


@dataclass
class MemoryPlan:
    """What the model will see for one reply, and how much of the history that is."""

    prompt_ids: list[int]
    budget: int
    first_kept: int  # index into the history of the first message the model sees
    dropped: int  # stored messages left outside memory
    kept_messages: list[dict] = field(repr=False, default_factory=list)

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

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of messages rendered with the model's own chat template."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True,
            return_dict=False, **self.template_kwargs)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

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

    def _block_starts(self, costs: list[int]) -> list[int]:
        """Indices of turns that begin a new block of about `chunk` tokens."""
        starts, before = [], 0
        for index, cost in enumerate(costs):
            if index == 0 or before // self.chunk != (before - costs[index - 1]) // self.chunk:
                starts.append(index)
            before += cost
        return starts

    def plan(self, history: list[dict], new_message: str, system_prompt: str | None = None) -> MemoryPlan:
        """Choose the newest turns that fit beside the system prompt and the new message."""
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        new = [{"role": "user", "content": new_message}]
        minimal = self.render(head + new)
        if len(minimal) > self.budget:
            own = self._turn_cost(new)
            raise MessageTooLong(own, self.budget - (len(minimal) - own))

        turns = group_turns(history)
        costs = [self._turn_cost(turn) for turn in turns]
        starts = self._block_starts(costs)
        # Block starts first (stable prefix); single turns after the last one only if no block fits.
        candidates = starts + [i for i in range(starts[-1] + 1 if starts else 0, len(turns) + 1)]
        suffix = [sum(costs[i:]) for i in range(len(turns) + 1)]
        for start in candidates:
            if len(minimal) + suffix[start] > self.budget + 8:  # estimate; exact check below
                continue
            kept = [m for turn in turns[start:] for m in turn]
            ids = self.render(head + kept + new)
            if len(ids) <= self.budget:
                first = sum(len(turn) for turn in turns[:start])
                return MemoryPlan(ids, self.budget, first, first, head + kept + new)
        return MemoryPlan(minimal, self.budget, len(history), len(history), head + new)
