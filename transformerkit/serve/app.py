"""The server: an OpenAI-compatible API over loaded models, and the web page, in one ASGI app (FastAPI).

    GET  /                        the page (chat, translate, search), static files shipped in the package
    GET  /health                  {"status": "ok", "models": [...]}
    GET  /metrics                 Prometheus text: requests, tokens, latency, batch load
    GET  /v1/models               the loaded models (and GET /v1/models/{id})
    POST /v1/chat/completions     chat models (decoders with a chat template)      generation.py
    POST /v1/completions          every decoder                                     generation.py
    POST /v1/embeddings           encoders                                          embeddings.py
    POST /v1/translations/text    encoder-decoders (ours)                           translations.py
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from torch import nn

from ..errors import ConfigError
from . import embeddings, generation, translations
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import ApiKey, BodyLimit, RequestMetrics
from .registry import Registry

STATIC = Path(__file__).parent / "static"


def create_app(models: dict[str, nn.Module], api_key: str | None = None, max_batch: int = 16,
               max_body_bytes: int = 4 * 2**20) -> FastAPI:
    """An app serving `models` (id -> a loaded model, in eval mode). Decoders get a continuous batcher each
    (at most `max_batch` sequences decoding at once); a request body over `max_body_bytes` is refused (413)."""
    registry = Registry(models, max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        registry.close()

    app = FastAPI(title="transformerkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry, app.state.metrics = registry, Metrics(registry.load)
    install_error_handlers(app)
    for module in (generation, embeddings, translations):
        app.include_router(module.router)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [served.card() for served in registry.models.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict:
        return registry.find(name).card()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": list(registry.models)}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # added last = runs first: timing sees every request, then the size limit, then the key
    if api_key:
        app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def check_address(host: str, port: int) -> None:
    """Refuse an address this machine cannot listen on now (in use, or not its own), before models are loaded."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(info[4])
    except OSError as error:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None


def run(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until Ctrl-C (uvicorn), which gives open streams 5 seconds to end."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
