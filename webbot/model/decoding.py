"""Turning the model's output into text: token choice (greedy or sampled) and whole-character text pieces.

Text leaves here only when its bytes form whole UTF-8 characters, and stop strings are
cut out before a caller sees them.
"""

import torch


def sample_tokens(logits, params: list) -> list[int | None]:
    """One next token per row of `logits` [rows, vocab]: greedy at temperature 0, else top-p sampling.

    All rows are chosen together and read back with one host sync (two when a score is not a number), so
    a step of a big batch does not wait on the device once per row.

    Scores that are not finite numbers (NaN or infinite, as an fp16 overflow gives) are never chosen; a row with
    no finite score gives None, for the engine to end that reply with an error. The sampler never sees them: on
    CUDA, torch.multinomial checks its input with a device-side assert, which would leave the process's GPU
    unusable for every later request."""
    finite = torch.isfinite(logits)
    usable = None  # every row has a finite score: the usual case, checked once a step
    if not bool(finite.all()):
        usable = finite.any(dim=-1).tolist()
        logits = logits.float().masked_fill(~finite, float("-inf"))
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0 and (usable is None or usable[i])]
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        temperatures = torch.tensor([[params[i].temperature] for i in sampled], device=logits.device)
        probs = torch.softmax(logits[rows].float() / temperatures, dim=-1)
        top_p = [params[i].top_p for i in sampled]
        if min(top_p) < 1.0:
            sorted_probs, order = probs.sort(descending=True, dim=-1)
            # keep the smallest set of tokens whose probabilities add up to top_p (always at least one);
            # a row at top_p 1 keeps them all
            limit = torch.tensor([[p if p < 1.0 else float("inf")] for p in top_p], device=logits.device)
            sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs >= limit, 0)
            picks = order.gather(-1, torch.multinomial(sorted_probs, 1)).squeeze(-1)
        else:
            picks = torch.multinomial(probs, 1).squeeze(-1)
        chosen[rows] = picks
    tokens = chosen.tolist()
    return [None if usable is not None and not usable[i] else token for i, token in enumerate(tokens)]


class TextDecoder:
    """Turns token ids into text pieces that never split a UTF-8 character or a stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix_offset = 0  # decode from a little before the new ids, so spaces come out right
        self.read_offset = 0
        self.pending = ""  # text held back because it may be the start of a stop string
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show (may be empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(self.pending + text[len(before):])

    def _release(self, text: str) -> str:
        """Cut at a stop string, and hold back a tail that could still become one."""
        for stop in self.stop:
            at = text.find(stop)
            if at != -1:
                self.stopped, self.pending = True, ""
                return text[:at]
        hold = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def flush(self) -> str:
        """Whatever was held back, once generation has ended without a stop string."""
        text, self.pending = ("" if self.stopped else self.pending), ""
        return text
