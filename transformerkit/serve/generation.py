"""POST /v1/chat/completions and POST /v1/completions, in the OpenAI API's shapes: a whole response, or with
`stream: true` server-sent events (`data: {chunk}` lines, then `data: [DONE]`), written against the SSE spec.

Each prompt becomes a Job in the model's continuous batch (batching.py); its text comes back through an asyncio
queue. A client that disconnects cancels its jobs, and the batch drops their rows at its next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from functools import partial
from typing import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..data.tokenizers import encode_text
from ..inference.chat import render, turn_end_ids
from .batching import Event, Job
from .errors import APIError, error_body
from .registry import ServedModel
from .schemas import ChatRequest, CompletionRequest, Sampling

router = APIRouter()

DEFAULT_MAX_TOKENS = 512  # when a request does not say (and its context has the room)


class Generation:
    """The sequences of one request (one per prompt), submitted to the model's batcher, and their events."""

    def __init__(self, served: ServedModel, prompts: list[list[int]], body: Sampling, max_tokens: int | None,
                 stop_tokens: list[int], param: str, chat: bool):
        context = served.context
        for i, prompt in enumerate(prompts):
            where = param if len(prompts) == 1 else f"{param}.{i}"
            if not prompt:
                raise APIError(400, f"{where}: the prompt is empty", param)
            if len(prompt) >= context or (max_tokens and len(prompt) + max_tokens > context):
                asked = f"{len(prompt)} in the prompt" + (f" and {max_tokens} to generate" if max_tokens else "")
                raise APIError(400, f"this model's maximum context length is {context} tokens; {where} asks for "
                                    f"{asked}", param, "context_length_exceeded")
        self.model_id = served.id
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.object, self.created = "chat.completion.chunk" if chat else "text_completion", int(time.time())
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        stops = [] if body.ignore_eos else stop_tokens
        self.jobs = [Job(prompt, max_tokens or min(DEFAULT_MAX_TOKENS, context - len(prompt)), served.model.tokenizer,
                         partial(self._emit, i), temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                         stop=body.stop_strings(), stop_tokens=stops) for i, prompt in enumerate(prompts)]
        self.prompt_tokens = sum(len(p) for p in prompts)
        try:
            for job in self.jobs:
                served.batcher.submit(job)
        except RuntimeError:
            raise APIError(503, "the server is shutting down", kind="server_error") from None

    def _emit(self, index: int, event: Event) -> None:  # on the batcher's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def usage(self) -> dict:
        completion = sum(len(job.ids) for job in self.jobs)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(prompt index, event) as the batch produces them, until every sequence has ended."""
        ended = 0
        while ended < len(self.jobs):
            index, event = await self.queue.get()
            if event.error:
                raise APIError(500, event.error, kind="server_error")
            ended += event.finish_reason is not None
            yield index, event

    async def collect(self, request: Request) -> tuple[list[str], list[str]]:
        """Every sequence's whole text and finish reason; a client that leaves first cancels them."""
        texts, reasons = [""] * len(self.jobs), ["stop"] * len(self.jobs)

        async def gather() -> None:
            async for index, event in self.events():
                texts[index] += event.text
                reasons[index] = event.finish_reason or reasons[index]

        gathering, watching = asyncio.ensure_future(gather()), asyncio.ensure_future(_disconnect(request))
        try:
            await asyncio.wait({gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not gathering.done():
                gathering.cancel()
                self.cancel()
            request.app.state.metrics.count_tokens(self.model_id, **_counts(self.usage()))
        if not gathering.done():
            raise APIError(499, "the client closed the connection")
        gathering.result()  # raises the batch's error, if any
        return texts, reasons

    def stream(self, request: Request, chunks: Callable[[int, Event], list[dict]], first: list[dict],
               include_usage: bool) -> StreamingResponse:
        """Server-sent events: `first`, then each event's chunks, the usage (when asked) and [DONE]. Starlette
        cancels the stream when the client disconnects; `finally` then cancels the jobs."""

        async def body() -> AsyncIterator[str]:
            try:
                for chunk in first:
                    yield _sse(chunk)
                async for index, event in self.events():
                    for chunk in chunks(index, event):
                        yield _sse(chunk)
                if include_usage:
                    yield _sse({**self.envelope(), "choices": [], "usage": self.usage()})
                yield "data: [DONE]\n\n"
            except APIError as error:
                yield _sse(error_body(error.message, error.kind, error.param, error.code))
            finally:
                self.cancel()
                request.app.state.metrics.count_tokens(self.model_id, **_counts(self.usage()))

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def envelope(self) -> dict:
        """The fields every response and chunk of this request starts with."""
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model_id}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    """A reply to a conversation, in the model's own chat template; ends at the end of the assistant's turn."""
    served = request.app.state.registry.get(body.model, "chat")
    model = served.model
    text = render(model.chat_template, [m.as_template_input() for m in body.messages])
    stop_tokens = [model.config.eos_id, *turn_end_ids(model.tokenizer)]
    run = Generation(served, [encode_text(model.tokenizer, text)], body, body.max_completion_tokens or body.max_tokens,
                     stop_tokens, "messages", chat=True)
    if body.stream:
        def chunks(index: int, event: Event) -> list[dict]:
            out = [_choice(run, {"content": event.text}, None)] if event.text else []
            return out + ([_choice(run, {}, event.finish_reason)] if event.finish_reason else [])

        first = [_choice(run, {"role": "assistant", "content": ""}, None)]
        return run.stream(request, chunks, first, bool(body.stream_options and body.stream_options.include_usage))
    texts, reasons = await run.collect(request)
    return {**run.envelope(), "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": texts[0]}, "logprobs": None,
                         "finish_reason": reasons[0]}], "usage": run.usage()}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    """The continuation of a prompt (or of each prompt of a list: one choice per prompt)."""
    served = request.app.state.registry.get(body.model, "completions")
    model = served.model
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    run = Generation(served, [encode_text(model.tokenizer, p) for p in prompts], body, body.max_tokens,
                     [model.config.eos_id], "prompt", chat=False)
    if body.stream:
        def chunks(index: int, event: Event) -> list[dict]:
            return [{**run.envelope(), "choices": [{"index": index, "text": event.text, "logprobs": None,
                                                     "finish_reason": event.finish_reason}]}]

        return run.stream(request, chunks, [], bool(body.stream_options and body.stream_options.include_usage))
    texts, reasons = await run.collect(request)
    return {**run.envelope(), "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                                           for i, (t, r) in enumerate(zip(texts, reasons))], "usage": run.usage()}


def _choice(run: Generation, delta: dict, finish_reason: str | None) -> dict:
    return {**run.envelope(), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason}]}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _counts(usage: dict) -> dict:
    return {"prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"]}


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body was already read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
