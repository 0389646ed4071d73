"""Request bodies, as the OpenAI API defines them (the fields we honour; others are ignored, as most servers do),
and ours for translation. Types are strict: "5" is not a number, so a client's mistake is named, not guessed at."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict[str, str]:
        """{role, content} with the content as one string, as chat templates expect."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": self.role, "content": text}


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """What chat and completions share: which model, how to choose tokens and when to stop."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's and llama.cpp's extension: always generate max_tokens (benchmarks)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 stop strings, none empty")
        return stop

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions


class Inputs(Strict):
    """A request with one text or a list of them, at most MAX_INPUTS."""

    MAX_INPUTS: ClassVar[int]
    model: str
    input: str | list[str] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _at_most(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) > cls.MAX_INPUTS:
            raise ValueError(f"at most {cls.MAX_INPUTS} inputs in one request")
        return value

    @property
    def texts(self) -> list[str]:
        """`input` as a list, whichever form the client sent."""
        return [self.input] if isinstance(self.input, str) else self.input


class EmbeddingRequest(Inputs):
    MAX_INPUTS = 2048
    encoding_format: Literal["float", "base64"] = "float"


class TranslationRequest(Inputs):
    """Ours: POST /v1/translations/text {"model", "input": [...], "beam": 5, "attention": false}."""

    MAX_INPUTS = 256
    beam: int = Field(5, ge=1, le=16)  # 1 is greedy
    attention: bool = False  # also return each sentence's cross-attention weights (per layer and head)
