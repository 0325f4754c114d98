"""What the web layer holds as "the bot": the `Bot` protocol that the local model (`chat_bot.ChatBot`) and a
remote model server (`remote_bot.RemoteBot`) both satisfy, and the prompt planning they share.
"""

from typing import Protocol

from webbot.model.memory import Memory, MemoryPlan
from webbot.model.metrics import Metrics
from webbot.model.stream import SamplingParams, Stream


class Bot(Protocol):
    """A model that answers conversations, loaded once and shared by every request."""

    model_id: str
    max_tokens: int
    system_prompt: str
    memory: Memory | None  # set by load()
    metrics: Metrics
    error: str | None  # why loading failed
    failure: str | None  # why a loaded model can no longer answer in this process (its GPU failed), a sentence

    @property
    def name(self) -> str:
        """The model id clients see."""

    @property
    def display_name(self) -> str:
        """What the page calls the model ("Llama 3.2 1B Instruct"), made from its id by `naming.display_name`."""

    @property
    def ready(self) -> bool:
        """True once load() has finished."""

    def load(self) -> "Bot":
        """Load what answering needs; raises (and sets `error`) on failure."""

    def close(self, seconds: float = 30.0) -> None:
        """End every reply and free what load() started (keeping what outlives the process), within `seconds`."""

    def plan(self, history: list[dict], message: str, system_prompt: str | None = None,
             partial_reply: str | None = None, owner: str = "", pins: list[int] = (),
             recall: bool = False, passages: list = (), question: str | None = None,
             notes: dict[int, str] | None = None) -> MemoryPlan:
        """What the model would see for `message`; raises MessageTooLong."""

    def generate(self, plan: MemoryPlan, params: SamplingParams, owner: str = "",
                 conversation: str | None = None) -> Stream:
        """Start a reply; raises EngineBusy when the queue is full (or UpstreamError for a model server)."""

    def forget(self, conversations: set[str]) -> None:
        """Drop what is kept of conversations deleted for good (their KV caches)."""

    def queue_position(self, stream: Stream) -> tuple[int, int]:
        """(place in the queue, 1 for next and 0 once started; replies being written now)."""

    def cancel_all(self) -> int:
        """End every running and queued reply now (a shutdown)."""

    def upstream_check(self) -> dict | None:
        """The model server's state for /healthz; None for a model in this process."""

    def gauges(self) -> dict[str, float]:
        """What /metrics reads at scrape time: queue_depth, active_streams, kv_cache_bytes, kv_cache_budget."""


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
             partial_reply: str | None = None, owner: str = "", pins: list[int] = (),
             recall: bool = False, passages: list = (), question: str | None = None,
             notes: dict[int, str] | None = None) -> MemoryPlan:
        """What the model would see for `message` after `history` in `owner`'s conversation, going on from
        `partial_reply` when given (raises MessageTooLong), with the pinned history messages `pins`, when
        `recall` the best matches from outside memory, the attached documents' `passages` that best match
        `question`, and the `notes` kept on history messages (see memory.py). The server's own system prompt
        makes a public head (see kv_cache.py)."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return self.memory.plan(history, message, system, partial_reply, system == self.system_prompt, owner,
                                pins, recall, passages, question, notes)

    def reply_tokens(self, prompt_tokens: int, requested: int | None) -> int:
        """The most tokens a reply may have: as many as asked (else the reserve), as far as the context has room."""
        return max(1, min(requested or self.reply_reserve, self.max_tokens - prompt_tokens))
