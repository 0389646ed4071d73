"""POST /v1/embeddings: sentence vectors from an encoder (model.embed), as OpenAI returns them: float lists, or
base64 of little-endian float32 (what the `openai` client asks for by default: a quarter of the bytes)."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request

from ..data.tokenizers import clean_text
from .errors import APIError
from .schemas import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    served = request.app.state.registry.get(body.model, "embeddings")
    model = served.model
    texts = body.texts
    counts = _token_counts(model, texts)
    vectors = (await served.run(lambda: model.embed(texts))).numpy().astype("<f4")  # (N, d)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    request.app.state.metrics.count_tokens(served.id, sum(counts))
    return {"object": "list", "data": data, "model": served.id,
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}


def _token_counts(model, texts: list[str]) -> list[int]:
    """Each input's tokens; an input longer than the model's context is refused (400) rather than cut short."""
    tokenizer = model.tokenizer
    limit = (tokenizer.truncation or {}).get("max_length", model.config.max_len)
    encodings = tokenizer.encode_batch([clean_text(t) for t in texts])
    for i, encoding in enumerate(encodings):
        if encoding.overflowing or len(encoding.ids) > limit:
            where = "input" if len(texts) == 1 else f"input.{i}"
            raise APIError(400, f"{where} is longer than this model's maximum context length of {limit} tokens",
                           "input", "context_length_exceeded")
    return [len(e.ids) for e in encodings]
