"""Continuous batching: every request to one decoder-only model decodes in one shared batch, and a request that
arrives while the batch runs joins it at the next step instead of waiting for it to end (Yu et al., 2022, Orca).

Decoding one token costs about as much for 8 rows as for 1 on a CPU or GPU that waits on reading the weights
(each step reads every weight once, whatever the batch), so sharing steps multiplies throughput.

One worker thread owns the model's decoding state (models/interface.py: start, step, reorder). Each round it
  1. prefills the requests that arrived since the last round, in one left-padded pass, and joins their state
     to the running batch (DecodeState.join: right-aligned, each row keeps its own positions);
  2. picks one token per row, each with its own temperature, top-p and random generator;
  3. hands each row's new text to its request, and drops the rows that finished or whose client left
     (state.reorder), which frees their cache;
  4. feeds the picked tokens: one step for the whole batch.
A row decodes exactly as it would alone: padding is masked and positions are per row.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..inference.generate import _TextStreamer
from ..inference.sampling import pick_next

log = logging.getLogger("transformerkit.serve")


@dataclass
class Event:
    """What a request hears from the worker: a piece of text, then the end (why, and how many tokens), or an error."""

    text: str = ""
    finish_reason: str | None = None  # "stop" (end token, stop token or stop string) or "length"
    completion_tokens: int = 0
    error: str | None = None


class Job:
    """One sequence to generate: its prompt and options, its progress, and `emit`, which takes its events to the
    request (called on the worker thread)."""

    def __init__(self, prompt: list[int], max_new: int, tokenizer: Tokenizer, emit: Callable[[Event], None], *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop: list[str] = (),
                 stop_tokens: list[int] = ()):
        self.prompt, self.max_new, self.temperature, self.top_p = prompt, max_new, temperature, top_p
        self.stop_tokens = set(stop_tokens)
        self.seed = seed if seed is not None else random.getrandbits(63)
        self.generator: torch.Generator | None = None  # made on the model's device when sampling starts
        self.ids: list[int] = []  # the tokens generated so far
        self.cancelled = False
        self._emit = emit
        self._streamer = _TextStreamer(tokenizer, 1, list(stop), lambda row, piece: self.emit(Event(text=piece)))

    def cancel(self) -> None:
        """The client left: the worker drops this row at its next step (or never starts it)."""
        self.cancelled = True

    def emit(self, event: Event) -> None:
        try:
            self._emit(event)
        except RuntimeError:  # the server's event loop is gone (shutting down): nobody is listening
            self.cancelled = True

    def take(self, token: int) -> str | None:
        """Add a picked token and stream its text; returns the finish reason when it ends the sequence."""
        if token in self.stop_tokens:
            return "stop"
        self.ids.append(token)
        if self._streamer.push(0, token):
            return "stop"
        return "length" if len(self.ids) >= self.max_new else None

    def finish(self, reason: str) -> None:
        self._streamer.flush()
        self.emit(Event(finish_reason=reason, completion_tokens=len(self.ids)))


class Batcher:
    """The worker thread that decodes every request to one model in one continuously refilled batch."""

    def __init__(self, model: nn.Module, max_batch: int = 16, name: str = "model"):
        self.model, self.max_batch = model, max_batch
        self.device = next(model.parameters()).device
        config = model.config
        self.position_table = config.max_len if config.positions in ("sinusoidal", "learned") else None
        self.waiting: deque[Job] = deque()
        self.rows: list[Job] = []  # the running batch, in the decoding state's row order
        self.state = None
        self.logits: Tensor | None = None  # (B, V) the next token's scores for every running row
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.wake:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.waiting.append(job)
            self.wake.notify()

    def close(self) -> None:
        """Stop the worker after its current step; unfinished requests are dropped."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join()

    def load(self) -> tuple[int, int]:
        """(rows decoding, requests waiting), for /metrics."""
        return len(self.rows), len(self.waiting)

    # the worker thread

    def _run(self) -> None:
        with torch.inference_mode():  # grad mode is per thread: the worker sets its own
            while True:
                with self.wake:
                    while not self.rows and not self.waiting and not self.closed:
                        self.wake.wait()
                    if self.closed:
                        return
                    admitted = self._admit()
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self.rows:
                        self._step()
                except Exception:  # a bug or out of memory: fail these requests, keep serving the next ones
                    log.exception("decoding failed")
                    for job in self.rows + admitted:
                        job.emit(Event(error="decoding failed on the server; its log says why"))
                    self.rows, self.state, self.logits = [], None, None

    def _admit(self) -> list[Job]:
        """Take waiting requests, first come first served, while the batch has room for them."""
        admitted: list[Job] = []
        while self.waiting and len(self.rows) + len(admitted) < self.max_batch:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                continue
            if (self.rows or admitted) and not self._fits([*admitted, job]):
                break
            admitted.append(self.waiting.popleft())
        return admitted

    def _fits(self, new: list[Job]) -> bool:
        """With a position table (learned or sinusoidal positions), the joined state's length plus the room its
        rows still need must stay within the table: right-aligning rows makes the state as long as its longest
        row, and the check is on the state's length. Rotary positions have no such limit."""
        if self.position_table is None:
            return True
        every = self.rows + new
        length = max(len(job.prompt) + len(job.ids) for job in every)  # each running row fed all it picked
        room = max(job.max_new - len(job.ids) for job in every)
        return length + room <= self.position_table

    def _prefill(self, jobs: list[Job]) -> None:
        """Read the new prompts in one left-padded pass and join them to the running batch."""
        width = max(len(job.prompt) for job in jobs)
        ids = torch.full((len(jobs), width), self.model.config.pad_id, dtype=torch.long)
        mask = torch.zeros(len(jobs), width, dtype=torch.bool)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt):], mask[i, width - len(job.prompt):] = torch.tensor(job.prompt), True
            if job.temperature > 0:
                job.generator = torch.Generator(device=self.device).manual_seed(job.seed)
        state = self.model.start(len(jobs), width + max(job.max_new for job in jobs))
        logits = self.model.step(ids.to(self.device), state, None if bool(mask.all()) else mask.to(self.device))
        if self.state is None:
            self.state, self.logits = state, logits
        else:
            self.state.join(state)
            self.logits = torch.cat([self.logits, logits])  # (B + b, V)
        self.rows += jobs

    def _step(self) -> None:
        """Pick, hand out and feed one token for every running row."""
        picks = self._pick(self.logits.float())  # (B,)
        keep = []
        for i, (job, token) in enumerate(zip(self.rows, picks.tolist())):
            if job.cancelled:
                continue
            reason = job.take(token)
            if reason is None:
                keep.append(i)
            else:
                job.finish(reason)
        if len(keep) < len(self.rows):
            if not keep:
                self.rows, self.state, self.logits = [], None, None
                return
            index = torch.tensor(keep, device=self.device)
            self.state.reorder(index)
            picks, self.rows = picks[index], [self.rows[i] for i in keep]
        self.logits = self.model.step(picks[:, None], self.state)

    def _pick(self, logits: Tensor) -> Tensor:
        """logits (B, V) -> one token per row: argmax, or a sample from the row's own generator, so a seeded
        request gets the same text whatever it shares the batch with."""
        picks = logits.argmax(dim=-1)
        for i, job in enumerate(self.rows):
            if job.temperature > 0:
                picks[i] = pick_next(logits[i:i + 1], job.temperature, 0, job.top_p, job.generator)[0]
        return picks
