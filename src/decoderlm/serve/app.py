"""The HTTP routes: the playground page, /health, and OpenAI's /v1/models, /v1/completions and
/v1/chat/completions; every error as OpenAI-style JSON (4xx for bad requests, never a traceback)."""

from __future__ import annotations

import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from decoderlm.serve.errors import APIError, error_response
from decoderlm.serve.guards import LimitBodySize, RequireAPIKey
from decoderlm.serve.handlers import ServeContext, chat_job, completion_job, respond
from decoderlm.serve.schemas import ChatRequest, CompletionRequest

log = logging.getLogger("decoderlm.serve")


def create_app(ctx: ServeContext) -> FastAPI:
    app = FastAPI(title="decoderlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    _error_handlers(app)
    # Added last = runs first: the key is checked before the body is read.
    app.add_middleware(LimitBodySize, max_bytes=ctx.limits.max_body_bytes)
    app.add_middleware(RequireAPIKey, api_key=ctx.api_key)
    page = resources.files("decoderlm.serve").joinpath("playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": ctx.model_id, **ctx.engine.load()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": ctx.model_id, "object": "model", "created": 0, "owned_by": "decoderlm",
            "max_model_len": ctx.context, "chat_template": ctx.template is not None}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await respond(completion_job(body, ctx), ctx, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        return await respond(chat_job(body, ctx), ctx, request)

    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(err.errors())
        return error_response(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        log.error("internal error on %s", request.url.path, exc_info=err)  # the traceback stays in the log
        return error_response(500, "internal server error (see the server's log)")


def validation_message(errors) -> tuple[str, str | None]:
    """pydantic's errors as one line, naming the field the first one is about."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    if not where:
        return "the request body must be a JSON object with the request's fields", None
    # A field that may take several types (prompt, stop, content) reports once per type, the type in
    # its location: name the field and say that no type matched.
    path = []
    for part in where:
        if part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper():
            got = type(first.get("input")).__name__
            return f"{'.'.join(path)}: none of the accepted types matches this value (got {got})", where[0]
        path.append(part)
    return f"{'.'.join(where)}: {first.get('msg', 'invalid value')}", where[0]
