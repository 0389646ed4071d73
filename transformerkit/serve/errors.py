"""Errors as the OpenAI API returns them, so every client library reports them the same way:

    HTTP 4xx/5xx  {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Every failure, ours or the framework's (malformed JSON, a wrong field, an unknown route, a bug), leaves as
such a body with the right status; a traceback goes to the server's log, never to the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import TransformerkitError

log = logging.getLogger("transformerkit.serve")


class APIError(Exception):
    """A request the server refuses: the status and what the client is told."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.kind, error.param, error.code), status_code=error.status)


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception a request can raise into an OpenAI-style error response."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = {404: f"no such route: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, error.detail)
        return error_response(APIError(error.status_code, str(message), code="not_found" if error.status_code == 404
                                       else None))

    @app.exception_handler(TransformerkitError)
    async def library_error(request: Request, error: TransformerkitError) -> JSONResponse:
        return error_response(APIError(400, str(error)))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(APIError(500, "the server failed on this request; its log says why",
                                       kind="server_error"))


def validation_error(errors: list[dict]) -> APIError:
    """FastAPI's list of validation errors -> one error naming the first bad field (400 for malformed JSON,
    422 for a field of the wrong type or out of range)."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return APIError(400, "the body is not valid JSON: " + str(first.get("ctx", {}).get("error", first["msg"])),
                        code="invalid_json")
    path = [str(part) for part in first.get("loc", ()) if part != "body" and not _type_name(part)]
    param = ".".join(path) or None
    if param is None:
        return APIError(422, f"the body must be a JSON object, sent as Content-Type: application/json ({first['msg']})")
    return APIError(422, f"{param}: {first['msg']}", param=param)


def _type_name(part) -> bool:
    """pydantic names the branch of a union it tried (`str`, `list[str]`) in an error's location: not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part)
