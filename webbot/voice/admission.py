"""Admission to a model that works on one thing at a time: a few may wait, the rest are told to come back.

Whisper (one clip at a time) and Piper (one sentence at a time) share it. No Flask here.
"""

import threading
from contextlib import contextmanager


class Busy(RuntimeError):
    """The queue is full; the caller should retry later."""


class Admission:
    """`slots` at a time, at most `max_waiting` more queued; beyond that `busy` (a Busy subclass) is raised."""

    def __init__(self, max_waiting: int, slots: int = 1, busy: type[Busy] = Busy, what: str = "requests"):
        self.max_waiting, self.slots, self.busy, self.what = max_waiting, slots, busy, what
        self._cond = threading.Condition()
        self._active = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def turn(self, admitted: bool = False):
        """Hold a slot for the block. `admitted`: this caller already got in once (a long text spoken sentence
        by sentence) and waits for its next turn however long the queue is."""
        with self._cond:
            if self._active >= self.slots:
                if not admitted and self._waiting >= self.max_waiting:
                    raise self.busy(f"{self._waiting} {self.what} are already waiting")
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: self._active < self.slots)
                finally:
                    self._waiting -= 1
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()
