"""POST /v1/translations/text (ours; OpenAI has no text translation route):

    {"model": "de-en", "input": ["Ein Hund rennt."], "beam": 5, "attention": false}
    -> {"object": "list", "model": "de-en", "data": [{"index": 0, "translation": "A dog runs."}], "usage": {...}}

With "attention": true each item also holds its cross-attention, for the page's heatmap:
{"source_tokens": [...], "target_tokens": [...], "layers": [[(Tq, Tk) matrix per head] per layer]}, the weights
with which each target token (teacher forced, viz.translation_attention) read each source token.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..data.tokenizers import encode
from ..inference.translate import translate
from ..viz import translation_attention
from .errors import APIError
from .schemas import TranslationRequest

router = APIRouter()


@router.post("/v1/translations/text")
async def translations(body: TranslationRequest, request: Request):
    served = request.app.state.registry.get(body.model, "translations")
    model = served.model
    sentences = body.texts
    lengths = [len(ids) for ids in encode(model.source_tokenizer, sentences)]
    positions = getattr(model.config, "positions", "none")  # a recurrent model has no position table
    limit = model.config.max_len - 1 if positions in ("sinusoidal", "learned") else None  # and the end token
    for i, n in enumerate(lengths):
        if limit is not None and n > limit:
            where = "input" if len(sentences) == 1 else f"input.{i}"
            raise APIError(400, f"{where} has {n} tokens; this model's maximum context length is {limit} tokens "
                                "per sentence", "input", "context_length_exceeded")

    def work() -> list[dict]:
        outputs = translate(model, sentences, beam=body.beam)
        items = [{"index": i, "translation": t} for i, t in enumerate(outputs)]
        if body.attention:
            for item, sentence in zip(items, sentences):
                item["attention"] = _cross_attention(model, sentence, item["translation"])
        return items

    data = await served.run(work)
    request.app.state.metrics.count_tokens(served.id, sum(lengths))
    return {"object": "list", "model": served.id, "data": data, "usage": {"prompt_tokens": sum(lengths)}}


def _cross_attention(model, sentence: str, translation: str) -> dict:
    weights, source_tokens, target_tokens = translation_attention(model, sentence, translation)
    if "cross" not in weights:
        raise APIError(400, "this model has no cross-attention to show (a recurrent model): ask without "
                            "'attention'", "attention")
    layers = [[[[round(float(w), 4) for w in row] for row in head] for head in layer.tolist()]
              for layer in weights["cross"]]  # per layer, per head: (Tq, Tk)
    return {"source_tokens": source_tokens, "target_tokens": target_tokens, "layers": layers}
